"""Sample-quality metrics on the FID Inception's features.

    inception.py         the FID InceptionV3 (pytorch-fid's network), its input conventions, weights
    fid.py               images -> sharded features -> (mu, sigma) -> Frechet distance; .npz stats;
                         EDM's seeds-0..N-1 protocol
    precision_recall.py  improved precision and recall (k-NN manifolds, k = 3)

    feats = fid.inception_features("pt_inception-2015-12-05-6726825d.pth")
    fid.fid(images, "stats.npz", feats)        # images (N, H, W, C) in [-1, 1]
"""
from diffjax.metrics import fid, inception, precision_recall
from diffjax.metrics.fid import (Features, Moments, feature_stats, frechet_distance,
                                 inception_features, load_stats, save_stats)

__all__ = ["Features", "Moments", "feature_stats", "fid", "frechet_distance", "inception",
           "inception_features", "load_stats", "precision_recall", "save_stats"]
