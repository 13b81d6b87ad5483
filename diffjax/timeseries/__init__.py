"""Time-series diffusion: TSDiff's predict / refine / synthesize on one unconditional model
(Kollovieh et al. 2023), and class-conditional multichannel signals (an EEG-like simulator).

    series.py         statsmodels' bundled series, windows, the rolling test split, mean scaling
                      (data source 'series')
    signals.py        the simulated multichannel signals (data source 'eeg_sim'), Welch PSD and
                      per-band spectral distances
    self_guidance.py  observation self-guidance, the guidance method 'tsdiff' (mse / quantile
                      energy, DDIM and DDPM forms)
    forecast.py       forecast, impute, refine (sgd / Langevin on the implicit density), tstr
    metrics.py        CRPS (samples, Gaussian closed form), pinball, MASE
    baselines.py      seasonal naive and a linear (ridge) forecaster
"""
