"""Pod-scale forms of DiT-XL/2 measured by the deviceless TPU preflight (issue 18; docs/SCALING.md).

    pip install -e ".[tpu]"
    python -m bench.scaling [--rows compile,remat,sample,fsdp,steptime] [--out scaling.json]

Every row compiles the real train step (``training/step.py``) and/or the sampling loop
(``inference/program.py``) of ``configs/imagenet256_dit_xl2.py`` for a TPU topology on this CPU
machine (``diffjax.preflight``) and reads XLA's memory and cost analyses; compile times are wall
clock here, so compare forms measured in the same run on a quiet machine. Rows:

    compile   v5p:4x4x4, the whole preflight (train step + sampler) unrolled vs scanned
    remat     v5p:2x2x1 (64 examples per chip): temporaries and FLOPs for every remat policy
    sample    the sampling step's FLOPs per chip on v5p:4x4x4 and v5e:16x16 (data 2, fsdp 128)
              against one chip running its share of the batch (what the network calls need)
    fsdp      v5e:16x16: state per chip with fsdp 256 (the old preset), 'auto' and 128; the
              train step's all-to-all count
    steptime  XLA's estimated step time and utilization at global batch 256 / 1024 / 4096 on
              v5p:4x4x4 and v5e:16x16, with the data / fsdp split and remat as knobs

Prints one JSON object per measurement as it finishes (and appends it to ``--out``), then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 2 ** 30


def preset(**over):
    """configs/imagenet256_dit_xl2.py with ``over`` ('model.remat': 'full', 'mesh.fsdp': 128, ...)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dit_xl2", os.path.join(ROOT, "configs", "imagenet256_dit_xl2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for key, value in over.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def measure(name, topology, *, sample=True, devices=None, **over):
    """One preflight: a flat dict of what the tables need."""
    from diffjax import preflight

    c = preset(**over)
    t0 = time.perf_counter()
    if devices is None:
        r = preflight.tpu(c, topology, sample=sample)
    else:
        r = preflight.run(c, preflight.devices(topology)[:devices], target=topology, sample=sample)
    wall = time.perf_counter() - t0
    out = {"name": name, "topology": topology, "overrides": {k: str(v) for k, v in over.items()},
           "mesh": r.mesh_shape, "state_gib": r.state_bytes_per_device / GiB,
           "preflight_seconds": wall, "undivided": len(r.undivided)}
    for p in r.programs:
        t = r.step_seconds(p)
        out[p.name] = {"temp_gib": p.temp_bytes / GiB, "peak_gib": p.peak_bytes / GiB,
                       "tflop": p.flops / 1e12, "est_s": t, "bound": r.time_source(p),
                       "util": (p.flops / (t * r.peak_flops)) if (t and r.peak_flops) else None,
                       "compile_s": p.compile_seconds, "oom": p.oom}
    return out


def all_to_alls(topology, **over):
    """The number of all-to-all ops in the compiled train step."""
    from diffjax import preflight
    from diffjax.models import registry
    from diffjax.training import step as step_lib

    c = preset(**over)
    shape = tuple(c.model.input_shape)
    model = registry.build_model(c.model)
    mesh = step_lib.make_mesh(c, model, shape, preflight.devices(topology))
    ts = step_lib.make_train_step(c, model, mesh, example_shape=shape)
    return ts.jit_step().lower(ts.abstract_state, ts.abstract_batch).compile().as_text().count(
        "all-to-all(")


def rows(which):
    if "compile" in which:
        for scan in (False, True):
            yield measure(f"compile scan={scan}", "v5p:4x4x4", **{"model.scan_layers": scan,
                                                                   "model.remat": "none"})
    if "remat" in which:
        yield measure("remat none, unrolled", "v5p:2x2x1", sample=False,
                      **{"model.remat": "none", "model.scan_layers": False})
        for policy in ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                       "offload_dot_with_no_batch_dims"):
            yield measure(f"remat {policy}", "v5p:2x2x1", sample=False,
                          **{"model.remat": policy})
    if "sample" in which:
        for topo, batch, fsdp, chips in (("v5p:4x4x4", 256, "auto", 64),
                                         ("v5e:16x16", 256, 128, 256)):
            yield measure(f"sample {topo}", topo, **{"mesh.fsdp": fsdp, "batch_size": batch})
            yield measure(f"sample one chip of {topo}", topo, devices=1,
                          **{"mesh.fsdp": 1, "batch_size": batch // chips})
    if "fsdp" in which:
        for fsdp in (256, "auto"):
            r = measure(f"fsdp {fsdp}", "v5e:16x16", sample=False, **{"mesh.fsdp": fsdp})
            r["all_to_all"] = all_to_alls("v5e:16x16", **{"mesh.fsdp": fsdp})
            yield r
    if "steptime" in which:
        for topo in ("v5p:4x4x4", "v5e:16x16"):
            for batch in (256, 1024, 4096):
                yield measure(f"step {topo} b{batch}", topo, sample=False,
                              **{"batch_size": batch})
            yield measure(f"step {topo} b4096 remat full", topo, sample=False,
                          **{"batch_size": 4096, "model.remat": "full"})
            yield measure(f"step {topo} b1024 data 4", topo, sample=False,
                          **{"batch_size": 1024, "mesh.data": 4})


def table(results):
    lines = [f"{'row':<36}{'mesh':<34}{'state':>7}{'temp':>8}{'TFLOP':>9}{'est s':>9}"
             f"{'util':>7}{'compile':>9}"]
    for r in results:
        mesh = ",".join(f"{k}{v}" for k, v in r["mesh"].items())
        for prog in ("train_step", "sample_loop"):
            p = r.get(prog)
            if not p:
                continue
            util = f"{100 * p['util']:6.1f}%" if p["util"] else "      -"
            lines.append(f"{r['name'][:24] + ' ' + prog[:5]:<36}{mesh:<34}{r['state_gib']:7.2f}"
                         f"{p['temp_gib']:8.2f}{p['tflop']:9.3f}{(p['est_s'] or 0):9.4f}{util}"
                         f"{p['compile_s']:8.0f}s")
        lines.append(f"{'':<36}whole preflight {r['preflight_seconds']:.0f} s"
                     + (f", all-to-alls {r['all_to_all']}" if "all_to_all" in r else ""))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="compile,remat,sample,fsdp,steptime")
    ap.add_argument("--out", default="scaling.json")
    args = ap.parse_args(argv)
    results = []
    for r in rows(set(args.rows.split(","))):
        print(json.dumps(r), flush=True)
        results.append(r)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
