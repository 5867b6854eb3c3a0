"""A reward as a toxic / non-toxic classifier over individual outputs (paper Section 5).

The positive class is *toxic* (what a detoxification audit looks for): an output is predicted
toxic when its reward is at or below a threshold c. c maximises accuracy on the training split
(`pipeline.irl.objectives.best_threshold`) and is then held fixed on every other split.
Accuracy and F1 at c, ROC-AUC from the rewards (threshold free), via scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from pipeline.irl.objectives import best_threshold


def fit_threshold(rewards, toxic) -> float:
    """c maximising accuracy of `toxic iff reward <= c` (= `non-toxic iff reward > c`)."""
    r = torch.as_tensor(np.asarray(rewards), dtype=torch.float64)
    nontoxic = torch.as_tensor(~np.asarray(toxic, dtype=bool))
    return float(best_threshold(r, nontoxic))


def classification_metrics(rewards, toxic, threshold: float) -> dict[str, float | None]:
    """accuracy, f1 (toxic positive), auc, and the support, at a fixed threshold."""
    r = np.asarray(rewards, dtype=float)
    y = np.asarray(toxic, dtype=bool)
    pred = r <= threshold
    both = 0 < y.sum() < len(y)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        # F1 rests on the toxic outputs: undefined without any
        "f1": float(f1_score(y, pred, zero_division=0)) if y.any() else None,
        "auc": float(roc_auc_score(y, -r)) if both else None,
        "n": int(len(y)),
        "toxic_rate": float(y.mean()),
    }


def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """Fraction of pairs with R(o+) > R(o-) (ties count as wrong)."""
    return float((np.asarray(r_chosen) > np.asarray(r_rejected)).mean())


def correct(rewards, toxic, threshold: float) -> np.ndarray:
    """Per-output correctness of the thresholded reward (disagreement tables)."""
    return (np.asarray(rewards) <= threshold) == np.asarray(toxic, dtype=bool)
