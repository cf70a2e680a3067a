"""Evaluation metrics without extra dependencies."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def roc_auc(labels: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties get half credit)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = float((y == 1).sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0 or not np.isfinite(s).all():
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy; for a single output column, the sign of the logit decides."""
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        pred = outputs.argmax(dim=1)
        return float((pred == targets.view(-1)).float().mean())
    pred = (outputs.view(-1) > 0).float()
    return float((pred == targets.view(-1).float()).float().mean())
