"""Small deterministic data sets for the realbugs programs (no downloads: sklearn's bundled digits and
generators, or tensors made here). Programs import this as `from _data import ...` (the harness puts
this folder on sys.path; files starting with '_' are not cases)."""
from __future__ import annotations

import numpy as np
import torch


def digits(raw: bool = False, n_val: int = 297, flat: bool = True, sort_by_label: bool = False):
    """sklearn's 8x8 digits: (x_train, y_train, x_val, y_val); standardized with the training statistics
    unless raw (pixels 0..16). flat=False gives (N, 1, 8, 8). sort_by_label orders the training set by
    class (as a folder-per-class dataset read in order)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.RandomState(0)
    perm = rng.permutation(len(x))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    xtr, ytr, xva, yva = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    if not raw:
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    if sort_by_label:
        order = np.argsort(ytr, kind="stable")
        xtr, ytr = xtr[order], ytr[order]
    xtr, ytr, xva, yva = map(torch.from_numpy, (xtr, ytr, xva, yva))
    if not flat:
        xtr, xva = xtr.reshape(-1, 1, 8, 8), xva.reshape(-1, 1, 8, 8)
    return xtr.contiguous(), ytr, xva.contiguous(), yva


def classification(n: int = 1200, d: int = 20, classes: int = 2, n_val: int = 300, seed: int = 0,
                   informative: int = 10, sep: float = 1.0):
    """sklearn make_classification, standardized: (x_train, y_train, x_val, y_val)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n + n_val, n_features=d, n_informative=informative,
                               n_redundant=min(4, d - informative), n_classes=classes, class_sep=sep,
                               random_state=seed)
    x = x.astype(np.float32)
    mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
    x = (x - mu) / sd
    t = torch.from_numpy
    return t(x[:n]), t(y[:n].astype(np.int64)), t(x[n:]), t(y[n:].astype(np.int64))


def regression(n: int = 1000, d: int = 8, n_val: int = 250, seed: int = 0, noise: float = 5.0):
    """sklearn make_regression with standardized inputs and targets scaled to unit std, shapes (N, d), (N,)."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n + n_val, n_features=d, n_informative=min(d, 6), noise=noise,
                           random_state=seed)
    x = x.astype(np.float32)
    y = (y / y[:n].std()).astype(np.float32)
    t = torch.from_numpy
    return t(x[:n]), t(y[:n]), t(x[n:]), t(y[n:])
