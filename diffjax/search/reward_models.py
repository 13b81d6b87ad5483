"""Classifiers of trained runs as jit-able logits functions, for verifiers (search/verifiers.py):

    logits_fn, num_classes = reward_models.evaluation_classifier(workdir, run.config)
    logits_fn, num_classes = reward_models.clean_classifier(classifier_workdir, run)

``evaluation_classifier``: the small classifier ``diffjax evaluate`` trains on the run's data and
caches in WORKDIR/classifier (training/evaluation.py), so a reward needs no second run.
``clean_classifier``: a run of configs/digits_clean_classifier.py (a classifier trained on clean
data, as EluCD guides with). Scoring with one classifier and evaluating with the other keeps a
search from being judged by the network it optimised.
"""
from __future__ import annotations

from typing import Callable


def evaluation_classifier(workdir: str, config) -> tuple[Callable, int]:
    from diffjax.training import evaluation

    clf = evaluation.get_classifier(workdir, config)
    res = config.eval.get("classifier_resolution", None)
    model, params = clf.model, clf.params

    def logits(x):
        return model.apply({"params": params}, evaluation.resize(x, res))
    return logits, int(model.num_classes)


def clean_classifier(classifier_workdir: str, run, params_name: str = "",
                     step: int = -1) -> tuple[Callable, int]:
    from diffjax.guidance import elucd

    fn, params = elucd.load_clean_classifier(
        "search", {"classifier_workdir": classifier_workdir, "classifier_params": params_name,
                   "classifier_step": step}, run)
    from diffjax.inference import load_config

    num_classes = int(load_config(classifier_workdir).model.num_classes)
    return (lambda x: fn(params, x, 0.0)), num_classes
