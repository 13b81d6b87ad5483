"""The guidance registry: named denoiser transforms D -> D with typed fields.

A method is a ``Method(name, make, fields, ...)``: ``make(D, ctx, **fields)`` returns the guided
denoiser (same contract D(x, sigma, cond) -> x0_hat), ``fields`` are ((field, default), ...). A
*section* is a plain dict ``{'name': ..., field: value, ...}`` (``config.sample.guidance``);
``resolve`` turns what a user gives (a section, a ConfigDict, a number = classifier-free scale, a
name, None) into a complete, checked section. Float fields are *traced*: ``split`` separates them
from the static part (name and non-float fields), so a jitted sampling program takes them as
arguments and changing them never recompiles. ``identity(fields)`` (e.g. classifier-free at scale
1) lets a program skip the transform statically.

Adding a method (a module in diffjax/guidance/ imported by __init__.py):

    def my_guidance(D, ctx, scale, tau):
        def guided(x, sigma, cond):
            ...                                  # any function of D, x, sigma, cond
        return guided
    register(Method(name="mine", make=my_guidance, fields=(("scale", 1.0), ("tau", 0.5)),
                    needs_classes=False, help="one line for diffjax sample --help"))
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple

import jax.numpy as jnp


class Context(NamedTuple):
    """What a transform may need of the run: the null class of a class-conditional model (its
    number of classes; None when unconditional), the key of the labels in ``cond`` and the
    program's sampling grid ``sigmas`` (decreasing, ending at 0; None when the caller gave none),
    for transforms that place something on it (T-Stitch's switch point)."""
    null_label: int | None = None
    label_key: str = "label"
    sigmas: Any = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    make: Callable                       # make(D, ctx, **fields) -> D'
    fields: tuple = ()                   # ((field, default), ...); float defaults are traced
    needs_classes: bool = False          # only for class-conditional runs
    identity: Callable | None = None     # identity(fields) -> True when the transform is D itself
    help: str = ""
    # prepare(section, run) -> (static, state): host-side, once per draw (load a weak model or a
    # classifier). ``static`` (hashable: e.g. the other network's denoiser function) selects the
    # program, ``state`` (a pytree of arrays: its params) is passed to it as an argument; make is
    # then called as make(D, ctx, static, state, **fields).
    prepare: Callable | None = None
    # check(fields, sigmas) raises ValueError for fields that cannot work on the sampling grid
    # ``sigmas`` (e.g. a guidance interval no noise level of the grid falls in)
    check: Callable | None = None
    # entries of ``cond`` the method reads besides the labels (e.g. an inverse problem's
    # 'measurement'): a draw without them is refused (inference.generate's ``cond``)
    needs_cond: tuple = ()

    def defaults(self) -> dict:
        return dict(self.fields)


METHODS: dict[str, Method] = {}
DEFAULT = "classifier_free"   # what a bare number means (``--guidance 3``, old configs' floats)


def register(method: Method) -> Method:
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"guidance method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown guidance method {name!r}; the registered ones are "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _typed(method: Method, field: str, value, where: str):
    default = method.defaults()[field]
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ValueError(f"{where}.{field} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{field} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(v):
            raise ValueError(f"{where}.{field} must be a finite number, got {value!r}")
        return v
    if isinstance(default, int):
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{field} must be an integer, got {value!r}") from None
        if isinstance(value, bool) or (_is_number(value) and v != value):
            raise ValueError(f"{where}.{field} must be an integer, got {value!r}")
        return v
    return type(default)(value)


def resolve(value: Any, *, where: str = "guidance", base: Mapping | None = None) -> dict:
    """A complete, checked section ``{'name': ..., field: value, ...}`` from ``value``:
    a mapping (section or ConfigDict; 'name' defaults to base's, else classifier_free), a number
    (classifier-free guidance with that scale), a method name (its defaults), or None ('none').
    ``base`` (a resolved section) supplies fields ``value`` leaves out when it names the same
    method. Unknown names and fields are errors naming the valid ones (``where`` prefixes them)."""
    if value is None:
        value = {"name": "none"}
    elif _is_number(value):
        value = {"name": DEFAULT, "scale": float(value)}
    elif isinstance(value, str):
        value = {"name": value}
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    elif not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a section {{name, scale, ...}}, a number or a method "
                         f"name, got {value!r}")
    value = dict(value)
    name = value.pop("name", None) or (base or {}).get("name") or DEFAULT
    if not isinstance(name, str):
        raise ValueError(f"{where}.name must be a method name, got {name!r}")
    try:
        method = get(name)
    except ValueError as e:
        raise ValueError(f"{where}.name: {e}") from None
    out = method.defaults()
    if base is not None and base.get("name") == name:
        out.update({k: v for k, v in base.items() if k in out})
    unknown = sorted(set(value) - set(out))
    if unknown:
        valid = ", ".join(f"{where}.{f}" for f in out) or "none"
        raise ValueError(f"{where}: guidance method {name!r} has no field(s) "
                         f"{', '.join(unknown)}; its fields: {valid}")
    for k, v in value.items():
        out[k] = _typed(method, k, v, where)
    return {"name": name, **out}


def split(section: Mapping, prepared_static=None) -> tuple[tuple, dict]:
    """(static, traced) parts of a resolved section: ``static`` is hashable (name, whether the
    transform is the identity, the non-float fields, what ``prepare`` made static) and selects a
    compiled program; ``traced`` are the float fields, passed to it as arguments."""
    method = get(section["name"])
    fields = {k: section[k] for k, _ in method.fields}
    traced = {k: v for k, v in fields.items() if isinstance(method.defaults()[k], float)}
    static_fields = tuple(sorted((k, v) for k, v in fields.items() if k not in traced))
    ident = bool(method.identity(fields)) if method.identity else False
    return (method.name, ident, static_fields, prepared_static), traced


def prepare(section: Mapping, run) -> tuple[tuple, Any]:
    """(static, state) for a section: what the method loads once on the host (``Method.prepare``,
    given the resolved section and the inference Run it guides), else ((name, ...), None).
    ``static`` is the full static part (``split``) including the prepared one."""
    method = get(section["name"])
    static, _ = split(section)
    if method.prepare is None or static[1]:
        return static, None
    pstatic, state = method.prepare(section, run)
    return split(section, pstatic)[0], state


def check(section: Mapping, sigmas) -> None:
    """Refuse a section whose method cannot work on the grid ``sigmas`` (``Method.check``)."""
    method = get(section["name"])
    static, _ = split(section)
    if method.check is not None and not static[1]:
        method.check({k: section[k] for k, _ in method.fields}, sigmas)


def traced_values(section: Mapping, dtype=jnp.float32) -> dict:
    """The traced fields of a section as arrays (the program's guidance argument)."""
    return {k: jnp.asarray(v, dtype) for k, v in split(section)[1].items()}


def apply(D: Callable, static: tuple, values: Mapping, ctx: Context, state: Any = None) -> Callable:
    """The guided denoiser: method ``static[0]`` with its static fields, the traced ``values`` and,
    for a method with ``prepare``, what it prepared (``state``: traced arrays)."""
    name, ident, static_fields = static[:3]
    if ident:
        return D
    method = get(name)
    if method.needs_classes and ctx.null_label is None:
        raise ValueError(f"guidance {name!r} needs a class-conditional model (this one has no "
                         f"classes); use guidance 'none'")
    if method.prepare is not None:
        if len(static) < 4 or static[3] is None:
            raise ValueError(f"guidance {name!r} loads what it needs first: build its program with "
                             f"guidance.prepare(section, run) (inference.generate does)")
        return method.make(D, ctx, static[3], state, **dict(static_fields), **values)
    return method.make(D, ctx, **dict(static_fields), **values)


def compose(*transforms: Callable) -> Callable:
    """D -> t_n(... t_1(D)): transforms applied in the order given."""

    def composed(D):
        for t in transforms:
            D = t(D)
        return D

    return composed


def describe(section: Mapping | None) -> str:
    """One-line text: 'classifier_free 3' (the scale of classifier-free guidance), 'none', or
    'NAME (field=value, ...)'."""
    if section is None or section["name"] == "none":
        return "none"
    fields = {k: v for k, v in section.items() if k != "name"}
    if section["name"] == DEFAULT and set(fields) == {"scale"}:
        return f"classifier_free {fields['scale']:g}"
    return f"{section['name']} (" + ", ".join(
        f"{k}={v:g}" if _is_number(v) else f"{k}={v}" for k, v in fields.items()) + ")"
