"""ParamStats: the recorded global norm, per-layer grads and update ratios against plain torch."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from trainscope.probe.buffer import RunBuffer, raw_to_host, to_host
from trainscope.probe.clock import StepClock
from trainscope.probe.guard import HookGuard
from trainscope.probe.params import ParamStats, layers_with_params
from trainscope.probe import stats as st
from trainscope.store.writer import RunWriter


def test_norm_grads_and_update_ratio_match_torch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)  # frozen: not part of any statistic
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    buf = RunBuffer(RunWriter(tmp_path), HookGuard(), flush_seconds=1e9, flush_rows=10**9, t0=time.monotonic())
    clock = StepClock(HookGuard(), every=1, optimizer=opt, sentinel=None)
    params = ParamStats(layers_with_params(model), buf, clock, grad_norm_every=1, has_optimizer=True)
    clock.collectors = [params]
    clock.install()
    model(torch.randn(4, 6)).pow(2).sum().backward()
    want_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in opt.param_groups[0]["params"]]))
    before = model[2].weight.detach().clone()
    opt.step()
    (norm_row,) = [r for r in buf.scalars if r[1] == "grad_norm"]
    assert to_host([norm_row[2]])[0] == pytest.approx(want_norm.item(), rel=1e-6)
    rows = {(r[1], r[2]): r for r in buf.layers}
    assert set(rows) == {("0", "grad"), ("0", "weight"), ("0", "update"), ("2", "grad"), ("2", "weight"),
                         ("2", "update")}
    grad = st.finalize_moments(raw_to_host([rows["0", "grad"][4]])[0], rows["0", "grad"][5])
    assert grad[0] == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-6)  # weight only: bias frozen
    upd = st.finalize_update(raw_to_host([rows["2", "update"][4]])[0], rows["2", "update"][5])
    want = ((model[2].weight.detach() - before).norm() ** 2 + (0.5 * model[2].bias.grad).norm() ** 2).sqrt()
    assert upd[0] == pytest.approx(want.item(), rel=1e-5)
