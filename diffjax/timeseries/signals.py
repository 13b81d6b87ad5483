"""Class-conditional multichannel signals: a documented EEG-like simulator, Welch power spectra and
the per-band spectral distance used to judge generated signals.

No multichannel physiological dataset ships with the installed packages (statsmodels' and
scikit-learn's bundled data are tabular or univariate), so the signals are simulated, from a
fixed seed, as the sum of
  * a 1/f ("pink") background per source, the aperiodic part of resting EEG spectra,
  * the class's rhythm: class 0 theta (6 Hz), class 1 alpha (10 Hz), class 2 beta (20 Hz), ...
    (``RHYTHMS``), a sinusoid with random phase and a slow random amplitude envelope,
mixed into ``channels`` electrodes by one fixed random mixing matrix (volume conduction), at
fs = 128 Hz, each channel standardised over the dataset. A class is thus a spectral signature
(which band carries the power, on which channels), what EEG decoders and the seed's conditional
multichannel generation line care about.

Spectral metric: Welch's PSD (Hann windows of ``nperseg`` samples, 50% overlap, averaged
periodograms) per channel; band power = the PSD summed over the band's bins; the distance of a
generated set to a real set, per class and band, is | mean log10 band power (generated) - the
real's |, averaged over channels (in decades: 0.1 = a 26% power mismatch).
"""
from __future__ import annotations

import numpy as np

FS = 128.0
RHYTHMS = (6.0, 10.0, 20.0, 35.0)      # theta, alpha, beta, gamma: one per class (up to 4)
BANDS = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
         "gamma": (30.0, 45.0)}


def _pink(rng, n: int, length: int) -> np.ndarray:
    """(n, length) 1/f noise: white noise shaped by 1/sqrt(f) in the Fourier domain."""
    spec = np.fft.rfft(rng.standard_normal((n, length)), axis=-1)
    f = np.fft.rfftfreq(length)
    f[0] = f[1]
    return np.fft.irfft(spec / np.sqrt(f), n=length, axis=-1)


def simulate(num: int, *, classes: int = 3, channels: int = 4, length: int = 128,
             seed: int = 0, mixing_seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """(signals (num, length, channels) float32 standardised, labels (num,) int32 balanced)."""
    if not 1 <= classes <= len(RHYTHMS):
        raise ValueError(f"eeg_sim: classes must be 1..{len(RHYTHMS)}, got {classes}")
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(mixing_seed).standard_normal((channels, channels)) / np.sqrt(
        channels)
    labels = np.arange(num) % classes
    t = np.arange(length) / FS
    sources = _pink(rng, num * channels, length).reshape(num, channels, length)
    sources /= sources.std(-1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, (num, 1))
    env = 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0, (num, 1)) * t
                             + rng.uniform(0, 2 * np.pi, (num, 1)))
    rhythm = 2.0 * env * np.sin(2 * np.pi * np.asarray(RHYTHMS)[labels][:, None] * t + phase)
    sources[:, 0] += rhythm                  # the rhythm's generator is source 0
    x = np.einsum("ij,njt->nti", mix, sources)
    x = (x - x.mean((0, 1))) / x.std((0, 1))
    return x.astype(np.float32), labels.astype(np.int32)


def welch_psd(x, nperseg: int = 64, fs: float = FS) -> tuple[np.ndarray, np.ndarray]:
    """(freqs (F,), PSD (..., F, C)) of signals (..., L, C): Hann windows, 50% overlap."""
    x = np.asarray(x, np.float64)
    length = x.shape[-2]
    nperseg = min(nperseg, length)
    step = nperseg // 2
    win = np.hanning(nperseg)
    starts = range(0, length - nperseg + 1, step)
    segs = np.stack([x[..., s:s + nperseg, :] for s in starts], -3)      # (..., K, n, C)
    segs = segs - segs.mean(-2, keepdims=True)
    spec = np.abs(np.fft.rfft(segs * win[:, None], axis=-2)) ** 2
    psd = spec.mean(-3) / (fs * (win ** 2).sum())
    psd[..., 1:-1, :] *= 2                   # one-sided
    return np.fft.rfftfreq(nperseg, 1 / fs), psd


def band_powers(x, nperseg: int = 64) -> dict[str, np.ndarray]:
    """{band: (..., C) power} of signals (..., L, C)."""
    f, psd = welch_psd(x, nperseg)
    return {b: psd[..., (f >= lo) & (f < hi), :].sum(-2) for b, (lo, hi) in BANDS.items()}


def band_distance(generated, real, nperseg: int = 64) -> dict[str, float]:
    """{band: | mean log10 power (generated) - (real) |, averaged over channels}."""
    g, r = band_powers(generated, nperseg), band_powers(real, nperseg)
    lg = lambda p: np.log10(np.maximum(p, 1e-12)).mean(0)
    return {b: float(np.abs(lg(g[b]) - lg(r[b])).mean()) for b in BANDS}


def source(config):
    """The 'eeg_sim' data source: ``config.data.num`` signals (train: seed 0; split 'test':
    another seed, the same mixing)."""
    from diffjax.data.arrays import ArraySource

    get = lambda k, d=None: config.get(k, d) if hasattr(config, "get") else getattr(config, k, d)
    split = get("split", "train")
    if split not in ("train", "test"):
        raise ValueError(f"data source 'eeg_sim': split must be 'train' or 'test', got {split!r}")
    classes = int(get("classes", 3))
    x, y = simulate(int(get("num", 1200)), classes=classes, channels=int(get("channels", 4)),
                    length=int(get("length", 128)), seed=0 if split == "train" else 1)
    return ArraySource(x, y, class_names=[f"rhythm_{f:g}Hz" for f in RHYTHMS[:classes]])
