"""Issue 11: the probe at scale (per-layer gradient norms every step, capture on anomaly, background
flush, no host copies on cheap steps). Tiny models, a few seconds in all."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trainscope


class _Tied(nn.Module):
    """Embedding tied to the output layer (one parameter in two layers), a frozen bias, a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.hidden = nn.Linear(8, 8)
        self.hidden.bias.requires_grad_(False)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 12)
        self.out.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.relu(self.hidden(self.emb(idx)))))


def test_per_layer_grad_norms_every_step_equal_vector_norm(tmp_path):
    """With the defaults, every step (past the dense first 200 too) has a `grad_norm` row per layer equal to
    torch.linalg.vector_norm over that layer's gradients, read independently by the test's own pre-hook."""
    torch.manual_seed(0)
    model = _Tied()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    crit = nn.CrossEntropyLoss()
    layers = {name: [p for p in m.parameters(recurse=False) if p.requires_grad]
              for name, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    want: dict[int, dict[str, float]] = {}
    want_global: dict[int, float] = {}

    def independent(optimizer, args, kwargs):
        s = len(want)
        want[s] = {n: torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ps])).item()
                   for n, ps in layers.items()}
        unique = {id(p): p for ps in layers.values() for p in ps}.values()
        want_global[s] = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in unique])).item()

    n_steps = 215
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, flush_seconds=0.05):
        opt.register_step_pre_hook(independent)
        g = torch.Generator().manual_seed(1)
        for _ in range(n_steps):
            idx = torch.randint(0, 12, (16,), generator=g)
            opt.zero_grad()
            loss = crit(model(idx), (idx + 1) % 12)
            loss.backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    rows = run.layers[run.layers.kind == "grad_norm"]
    assert sorted(rows.step.unique()) == list(range(n_steps))  # every step, not every 10th after 200
    assert set(rows.layer) == set(layers)
    got = {(int(r.step), r.layer): r.norm for r in rows.itertuples()}
    assert len(got) == len(rows) == n_steps * len(layers)  # one row per layer and step
    for s, per_layer in want.items():
        for name, v in per_layer.items():
            assert got[s, name] == pytest.approx(v, rel=1e-5, abs=1e-9), (s, name)
    numel = rows.groupby("layer").numel.first()
    assert numel["out"] == 12 * 8 + 12 and numel["hidden"] == 64  # the tied weight in both; frozen bias out
    gn = run.scalar("grad_norm")
    assert list(gn.index) == list(range(n_steps))
    for s, v in gn.items():
        assert v == pytest.approx(want_global[int(s)], rel=1e-5)  # the tied weight counted once
