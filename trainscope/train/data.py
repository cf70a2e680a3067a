"""Deterministic data for the case studies.

StreamRec's click logs and the document classifier's corpus are private, so both are synthesized with
a known signal: a fixed random "teacher" decides the labels, plus label noise, so that the achievable
AUC/accuracy is bounded and overfitting shows up in the validation numbers the way it does on real
data. The digits set is real (scikit-learn's bundled `load_digits`, nothing is downloaded).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainscope.errors import TrainscopeError


@dataclass
class Splits:
    """Train/validation(/test) datasets plus what a model needs to know about them."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset | None
    input_dim: int
    num_classes: int  # 1 for binary (BCEWithLogits), else the class count
    description: str


def _split(x: np.ndarray, y: np.ndarray, sizes: list[int], y_dtype: torch.dtype) -> list[TensorDataset]:
    out, start = [], 0
    for n in sizes:
        xs = torch.from_numpy(np.ascontiguousarray(x[start : start + n], dtype=np.float32))
        ys = torch.from_numpy(np.ascontiguousarray(y[start : start + n])).to(y_dtype)
        out.append(TensorDataset(xs, ys))
        start += n
    return out


def _standardize(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / a.std()


def streamrec_clicks(
    n_train: int = 6000,
    n_val: int = 3000,
    n_test: int = 0,
    n_features: int = 128,
    n_informative: int = 16,
    signal: float = 3.0,
    linear_share: float = 0.4,
    base_rate: float = 0.3,
    seed: int = 0,
) -> Splits:
    """Synthetic click data: 128 standardized features, P(click) from a fixed nonlinear teacher.

    The teacher mixes a linear score (weight `linear_share`) with an even nonlinear one (absolute
    values of random projections and two pairwise interactions) on `n_informative` features, scaled to
    std `signal` on the logit; labels are Bernoulli draws, so even the teacher's AUC is below 1 (about
    0.92: label noise). Logistic regression reaches about 0.65, a well-trained MLP about 0.78.
    Targets are float 0/1 shaped (n, 1) for BCEWithLogitsLoss.
    """
    if min(n_train, n_val) <= 0 or n_test < 0:
        raise TrainscopeError(f"streamrec_clicks: sizes must be positive (n_train={n_train}, n_val={n_val})")
    if not 4 <= n_informative <= n_features or not 0 <= linear_share <= 1:
        raise TrainscopeError(f"streamrec_clicks: need 4 <= n_informative <= {n_features}, 0 <= linear_share <= 1")
    teacher = np.random.default_rng(1234)  # fixed: the same "world" for every seed
    w_even = teacher.normal(size=(n_informative, 12)) / np.sqrt(n_informative)
    v_even = teacher.normal(size=12)
    w_lin = teacher.normal(size=n_informative) / np.sqrt(n_informative)

    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    x = rng.normal(size=(n, n_features))
    xi = x[:, :n_informative]
    # a linear part (what logistic regression can find) mixed with an even, nonlinear part
    # (|projections| and pairwise interactions: invisible to a linear model)
    even = np.abs(xi @ w_even) @ v_even + 0.8 * xi[:, 0] * xi[:, 1] + 0.8 * xi[:, 2] * xi[:, 3]
    lin = xi @ w_lin
    z = linear_share * _standardize(lin) + np.sqrt(1 - linear_share**2) * _standardize(even)
    # bias chosen so the mean click rate is about base_rate
    logit = signal * z + np.log(base_rate / (1 - base_rate))
    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.float32)[:, None]
    sizes = [n_train, n_val] + ([n_test] if n_test else [])
    parts = _split(x, y, sizes, torch.float32)
    return Splits(
        train=parts[0],
        val=parts[1],
        test=parts[2] if n_test else None,
        input_dim=n_features,
        num_classes=1,
        description=f"synthetic StreamRec clicks: {n_train} train / {n_val} val, {n_features} features, "
        f"click rate {float(y.mean()):.2f}",
    )


def documents(
    n_train: int = 4000,
    n_val: int = 1000,
    n_test: int = 0,
    input_dim: int = 1000,
    num_classes: int = 50,
    words_per_doc: int = 60,
    topic_words: int = 40,
    noise: float = 0.5,
    seed: int = 0,
) -> Splits:
    """Synthetic TF-IDF-like documents in `num_classes` categories.

    Each class has a set of characteristic word ids; a document draws `words_per_doc` words, a fraction
    `noise` of them from the whole vocabulary, the rest from its class's words. Features are the
    L2-normalized word counts (non-negative, sparse, like TF-IDF). Targets are int64 class ids.
    """
    if min(n_train, n_val) <= 0:
        raise TrainscopeError("documents: sizes must be positive")
    if topic_words > input_dim or num_classes < 2:
        raise TrainscopeError("documents: need topic_words <= input_dim and num_classes >= 2")
    teacher = np.random.default_rng(4321)
    topics = np.stack([teacher.choice(input_dim, size=topic_words, replace=False) for _ in range(num_classes)])
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = rng.integers(0, num_classes, size=n)
    x = np.zeros((n, input_dim), dtype=np.float32)
    n_noise = int(round(words_per_doc * noise))
    for i in range(n):
        topic = topics[y[i]][rng.integers(0, topic_words, size=words_per_doc - n_noise)]
        rand = rng.integers(0, input_dim, size=n_noise)
        np.add.at(x[i], np.concatenate([topic, rand]), 1.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sizes = [n_train, n_val] + ([n_test] if n_test else [])
    parts = _split(x, y, sizes, torch.int64)
    return Splits(
        train=parts[0],
        val=parts[1],
        test=parts[2] if n_test else None,
        input_dim=input_dim,
        num_classes=num_classes,
        description=f"synthetic documents: {n_train} train / {n_val} val, {input_dim} TF-IDF features, "
        f"{num_classes} classes",
    )


def digits(seed: int = 0, n_val: int = 180, n_test: int = 360) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images), shuffled with `seed`, standardized.

    The scaler is fit on the training split only (fitting it on train+val would leak).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise TrainscopeError("the digits data needs scikit-learn: pip install 'trainscope[data]'") from None
    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_train = len(y) - n_val - n_test
    if n_train <= 0:
        raise TrainscopeError("digits: n_val + n_test leaves no training data")
    mean = x[:n_train].mean(axis=0)
    std = x[:n_train].std(axis=0) + 1e-6  # some border pixels are always 0
    x = (x - mean) / std
    train, val, test = _split(x, y, [n_train, n_val, n_test], torch.int64)
    return Splits(
        train=train,
        val=val,
        test=test,
        input_dim=64,
        num_classes=10,
        description=f"sklearn digits: {n_train} train / {n_val} val / {n_test} test, 64 pixels, 10 classes",
    )
