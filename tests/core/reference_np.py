"""Independent NumPy implementations of sampler updates, written from the papers' own formulas and
frames (float64). Used only to cross-check diffjax's JAX samplers.
"""
import numpy as np


def gaussian_D(x, sigma, mu, s):
    """Exact E[x0 | x0 + sigma eps = x] for x0 ~ N(mu, s^2)."""
    return (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)


def ddim_vp(x_T, timesteps, alphas_cumprod, eps_model, eta=0.0, noises=None):
    """DDIM, Song et al. 2021 Eq. (12), in the VP frame x_t = sqrt(ab) x0 + sqrt(1-ab) eps.

    timesteps decreasing integers; the last step goes to alpha_bar = 1 (diffusers set_alpha_to_one).
    """
    x = x_T
    for i, t in enumerate(timesteps):
        ab = alphas_cumprod[t]
        ab_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        eps = eps_model(x, t)
        x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        sig = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
        x = np.sqrt(ab_prev) * x0 + np.sqrt(max(1 - ab_prev - sig ** 2, 0.0)) * eps
        if noises is not None:
            x = x + sig * noises[i]
    return x


def edm_sampler(x, sigmas, D, heun=True, s_churn=0.0, s_tmin=0.0, s_tmax=np.inf, s_noise=1.0,
                noises=None):
    """Karras et al. 2022, Algorithm 2 (Euler when heun=False)."""
    n = len(sigmas) - 1
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, np.sqrt(2) - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = s_cur * (1 + gamma)
        if noises is not None:
            x = x + np.sqrt(s_hat ** 2 - s_cur ** 2) * s_noise * noises[i]
        d = (x - D(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if heun and s_next > 0:
            d2 = (x_next - D(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def dpmpp_2m_vp(x, ts, alpha, sigma, x0_model):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, in the VP frame with lambda = log(alpha/sigma).

    ts: decreasing times; the first step is first order.
    """
    lam = lambda t: np.log(alpha(t) / sigma(t))
    prev_x0 = None
    for i in range(len(ts) - 1):
        s, t = ts[i], ts[i + 1]
        h = lam(t) - lam(s)
        x0 = x0_model(x, s)
        if prev_x0 is None:
            Dd = x0
        else:
            r = (lam(s) - lam(ts[i - 1])) / h
            Dd = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0
        x = sigma(t) / sigma(s) * x - alpha(t) * np.expm1(-h) * Dd
        prev_x0 = x0
    return x
