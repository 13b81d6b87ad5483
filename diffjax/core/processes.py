"""Forward processes x_t = alpha(t) x0 + sigma(t) eps: one abstraction used by every loss and sampler.

Each process gives, on its own time variable t:
    alpha(t), sigma(t), log_snr(t) = log(alpha^2 / sigma^2) and its inverse t_from_log_snr,
    sigma_tilde(t) = sigma / alpha (the EDM-frame noise level; x_t / alpha = x0 + sigma_tilde eps),
    t_from_sigma_tilde (inverse), noise_label(t) (the scalar fed to a network), and
    perturb(key, x0, t) (a draw from the forward kernel).
Samplers work in the EDM frame (x / alpha, sigma_tilde) - the frame of Karras et al. 2022 - which is
exact for every affine process, so any sampler runs on any process.

Processes:
    DiscreteVP  DDPM (Ho et al. 2020): betas 1e-4..0.02 over 1000 steps; alpha_bar = prod(1 - beta).
    VPLinear    the continuous limit (Song et al. 2021): beta(t) = b0 + t (b1 - b0), b0=0.1, b1=20,
                log alpha = -t^2 (b1 - b0)/4 - t b0/2.
    VPCosine    Nichol & Dhariwal 2021: alpha_bar = cos^2(((t + s)/(1 + s)) pi/2) / cos^2(s/(1+s) pi/2).
    VE          Song et al. 2021: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t.
    EDM         Karras et al. 2022: alpha = 1, sigma = t; training ln sigma ~ N(P_mean, P_std^2).
    Flow        rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023): alpha = 1 - t,
                sigma = t.
    PFGMPP      PFGM++ (Xu et al. 2023): EDM's sigma with the heavy-tailed kernel of augmentation
                dimension D (see pfgmpp.py); D -> infinity recovers EDM.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def _f32(x):
    return jnp.asarray(x, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Process:
    """Base class. Subclasses define alpha, sigma and t_from_log_snr on their native time."""

    name: str = "process"
    t_min: float = 0.0
    t_max: float = 1.0

    # --- to override -------------------------------------------------------------------------
    def alpha(self, t):
        raise NotImplementedError

    def sigma(self, t):
        raise NotImplementedError

    def t_from_log_snr(self, log_snr):
        raise NotImplementedError

    def noise_label(self, t):
        """Scalar noise conditioning fed to a network (eps/x0/v parameterizations)."""
        return _f32(t) * 1000.0

    # --- derived ----------------------------------------------------------------------------
    def log_snr(self, t):
        """log(alpha^2 / sigma^2)."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def sigma_tilde(self, t):
        """EDM-frame noise level sigma / alpha = exp(-log_snr / 2)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_tilde(self, s):
        return self.t_from_log_snr(-2.0 * jnp.log(_f32(s)))

    def sigma_tilde_range(self):
        """(smallest, largest) EDM-frame noise level reachable on [t_min, t_max]."""
        return (float(self.sigma_tilde(_f32(self.t_min))), float(self.sigma_tilde(_f32(self.t_max))))

    def velocity_coeffs(self, t):
        """(d alpha/dt, d sigma/dt): the probability-flow velocity is alpha' x0_hat + sigma' eps_hat."""
        t = _f32(t)
        da = jax.grad(lambda u: jnp.sum(self.alpha(u)))(t)
        ds = jax.grad(lambda u: jnp.sum(self.sigma(u)))(t)
        return da, ds

    def perturb(self, key, x0, t):
        """x_t = alpha(t) x0 + sigma(t) eps. Returns (x_t, eps). ``t`` is (B,) or scalar."""
        eps = jax.random.normal(key, x0.shape, x0.dtype)
        a = _bcast(self.alpha(t), x0)
        s = _bcast(self.sigma(t), x0)
        return a * x0 + s * eps, eps

    def prior(self, keys, shape, sigma_max, dtype=jnp.float32):
        """x_T at EDM-frame level sigma_max for per-example ``keys`` (B rows), each shaped ``shape``.

        Gaussian: sigma_max * N(0, I), row b drawn from fold_in(keys[b], 0) (samplers.prior_noise).
        """
        from diffjax.core.samplers.base import prior_noise

        return jnp.asarray(sigma_max, dtype) * prior_noise(keys, tuple(shape), dtype)


def _bcast(v, x):
    v = jnp.asarray(v, x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DiscreteVP(Process):
    """DDPM's discrete-time VP process; t in [0, T-1] (integer steps, log alpha_bar interpolated).

    beta_schedule: 'linear' (beta_start..beta_end, Ho et al. 2020), 'scaled_linear' (sqrt-linear,
    Stable Diffusion) or 'cosine' (Nichol & Dhariwal 2021, betas clipped at 0.999). steps_offset:
    diffusers' scheduler field (Stable Diffusion: 1), the shift of the 'leading' sampling grid
    (timesteps.ddpm_timesteps); it does not change the process or training.
    """

    name: str = "vp_discrete"
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    steps_offset: int = 0
    t_min: float = 0.0
    t_max: float = 999.0

    def __post_init__(self):
        if self.beta_schedule not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; expected linear, "
                             "scaled_linear or cosine")
        object.__setattr__(self, "t_max", float(self.num_train_steps - 1))

    def betas(self) -> np.ndarray:
        n = self.num_train_steps
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
        if self.beta_schedule == "scaled_linear":
            return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, dtype=np.float64) ** 2
        s = 0.008
        f = lambda u: np.cos((u / n + s) / (1 + s) * np.pi / 2) ** 2
        ab = f(np.arange(n + 1)) / f(0)
        return np.minimum(1 - ab[1:] / ab[:-1], 0.999)

    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas())

    def _log_alpha_bar_table(self):
        return jnp.asarray(np.log(self.alphas_cumprod()), jnp.float32)

    def alpha(self, t):
        grid = jnp.arange(self.num_train_steps, dtype=jnp.float32)
        return jnp.exp(0.5 * jnp.interp(_f32(t), grid, self._log_alpha_bar_table()))

    def sigma(self, t):
        grid = jnp.arange(self.num_train_steps, dtype=jnp.float32)
        lab = jnp.interp(_f32(t), grid, self._log_alpha_bar_table())
        return jnp.sqrt(-jnp.expm1(lab))

    def log_snr(self, t):
        grid = jnp.arange(self.num_train_steps, dtype=jnp.float32)
        lab = jnp.interp(_f32(t), grid, self._log_alpha_bar_table())
        return lab - jnp.log(-jnp.expm1(lab))

    def t_from_log_snr(self, log_snr):
        ab = self.alphas_cumprod()
        table = jnp.asarray(np.log(ab) - np.log1p(-ab), jnp.float32)  # decreasing in t
        grid = jnp.arange(self.num_train_steps, dtype=jnp.float32)
        return jnp.interp(-_f32(log_snr), -table, grid)

    def noise_label(self, t):
        return _f32(t)


@dataclasses.dataclass(frozen=True)
class VPLinear(Process):
    """Continuous VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [eps, 1]."""

    name: str = "vp_linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def _log_alpha(self, t):
        t = _f32(t)
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t):
        return jnp.exp(self._log_alpha(t))

    def sigma(self, t):
        return jnp.sqrt(-jnp.expm1(2.0 * self._log_alpha(t)))

    def log_snr(self, t):
        la2 = 2.0 * self._log_alpha(t)
        return la2 - jnp.log(-jnp.expm1(la2))

    def t_from_log_snr(self, log_snr):
        # -log alpha^2 = softplus(-log_snr) = t^2 (b1 - b0)/2 + t b0
        c = jax.nn.softplus(-_f32(log_snr))
        db = self.beta_max - self.beta_min
        return (-self.beta_min + jnp.sqrt(self.beta_min ** 2 + 2.0 * db * c)) / db


@dataclasses.dataclass(frozen=True)
class VPCosine(Process):
    """Cosine VP (Nichol & Dhariwal 2021) in continuous time t in [0, t_max]."""

    name: str = "vp_cosine"
    s: float = 0.008
    t_min: float = 0.0
    t_max: float = 0.9946  # alpha_bar(t_max) ~ 1e-4 ... keeps sigma_tilde finite (~ 120)

    def _angle(self, t):
        return (_f32(t) + self.s) / (1 + self.s) * (math.pi / 2)

    def alpha(self, t):
        return jnp.cos(self._angle(t)) / math.cos(self.s / (1 + self.s) * math.pi / 2)

    def sigma(self, t):
        return jnp.sqrt(jnp.clip(1.0 - self.alpha(t) ** 2, 0.0, 1.0))

    def t_from_log_snr(self, log_snr):
        c0 = math.cos(self.s / (1 + self.s) * math.pi / 2)
        a = jnp.sqrt(jax.nn.sigmoid(_f32(log_snr))) * c0
        return jnp.arccos(a) * 2 / math.pi * (1 + self.s) - self.s


@dataclasses.dataclass(frozen=True)
class VE(Process):
    """Variance exploding (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    name: str = "ve"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha(self, t):
        return jnp.ones_like(_f32(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _f32(t)

    def t_from_log_snr(self, log_snr):
        return (-0.5 * _f32(log_snr) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def noise_label(self, t):
        return jnp.log(self.sigma(t)) / 4.0


@dataclasses.dataclass(frozen=True)
class EDM(Process):
    """EDM (Karras et al. 2022): alpha = 1, sigma = t; training sigma log-normal(P_mean, P_std)."""

    name: str = "edm"
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    rho: float = 7.0

    def __post_init__(self):
        object.__setattr__(self, "t_min", float(self.sigma_min))
        object.__setattr__(self, "t_max", float(self.sigma_max))

    def alpha(self, t):
        return jnp.ones_like(_f32(t))

    def sigma(self, t):
        return _f32(t)

    def t_from_log_snr(self, log_snr):
        return jnp.exp(-0.5 * _f32(log_snr))

    def noise_label(self, t):
        return jnp.log(_f32(t)) / 4.0


@dataclasses.dataclass(frozen=True)
class Flow(Process):
    """Rectified flow / flow matching with the linear path: alpha = 1 - t, sigma = t."""

    name: str = "flow"
    t_min: float = 0.0
    t_max: float = 0.999

    def alpha(self, t):
        return 1.0 - _f32(t)

    def sigma(self, t):
        return _f32(t)

    def t_from_log_snr(self, log_snr):
        return jax.nn.sigmoid(-0.5 * _f32(log_snr))


@dataclasses.dataclass(frozen=True)
class PFGMPP(EDM):
    """PFGM++ (Xu et al. 2023) with augmentation dimension D and alignment r = sigma sqrt(D).

    Same sigma(t) = t, preconditioning and sampler as EDM; only perturb() and the prior differ.
    D = inf gives EDM exactly.
    """

    name: str = "pfgmpp"
    D: float = 128.0

    def perturb(self, key, x0, t):
        from diffjax.core import pfgmpp

        n = pfgmpp.perturbation(key, x0.shape, t, self.D)
        return x0 + n.astype(x0.dtype), n / _bcast(_f32(t), n)

    def prior(self, keys, shape, sigma_max, dtype=jnp.float32):
        """The PFGM++ prior R u with r = sigma_max sqrt(D) (row b from fold_in(keys[b], 0));
        D = inf gives the Gaussian prior."""
        if math.isinf(self.D):
            return super().prior(keys, shape, sigma_max, dtype)
        from diffjax.core import pfgmpp

        # float32: JAX's default-float draws cast to float32, as before dtypes were threaded through
        pdt = None if jnp.dtype(dtype) == jnp.float32 else dtype
        draw = lambda k: pfgmpp.perturbation(jax.random.fold_in(k, 0), (1,) + tuple(shape),
                                             sigma_max, self.D, pdt)[0]
        return jax.vmap(draw)(keys).astype(dtype)


PROCESSES = {
    "vp_discrete": DiscreteVP,
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ve": VE,
    "edm": EDM,
    "flow": Flow,
    "pfgmpp": PFGMPP,
}


def get(name: str, **kwargs) -> Process:
    """Build a process by name, e.g. ``get('vp_discrete', beta_schedule='cosine')``."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; expected one of {sorted(PROCESSES)}")
    cls = PROCESSES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for process {name!r}; "
                         f"valid: {sorted(fields - {'name'})}")
    return cls(**kwargs)
