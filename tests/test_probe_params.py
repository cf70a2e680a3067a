"""ParamStats: the recorded global norm, per-layer grads and update ratios against plain torch."""
from __future__ import annotations

import time

import numpy as np

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
    # the norms of every norm step stay on the device until the flush drains them (one copy)
    dense_scalars, dense_cols = params._drain()
    (norm_row,) = [r for r in dense_scalars if r[1] == "grad_norm"]
    assert norm_row[2] == pytest.approx(want_norm.item(), rel=1e-6)
    rows = {(r[1], r[2]): r for r in buf.layers}
    assert set(rows) == {(n, k) for n in ("0", "2") for k in ("grad", "weight", "update")}
    (cols,) = dense_cols
    assert cols["layer"] == ["0", "2"] and cols["kind"] == ["grad_norm"] * 2
    want_layer = torch.cat([model[2].weight.grad.flatten(), model[2].bias.grad.flatten()]).norm()
    assert cols["norm"][1] == pytest.approx(want_layer.item(), rel=1e-6) and cols["numel"][1] == 18
    grad = st.finalize_moments(raw_to_host([rows["0", "grad"][4]])[0], rows["0", "grad"][5])
    assert grad[0] == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-6)  # weight only: bias frozen
    upd = st.finalize_update(raw_to_host([rows["2", "update"][4]])[0], rows["2", "update"][5])
    want = ((model[2].weight.detach() - before).norm() ** 2 + (0.5 * model[2].bias.grad).norm() ** 2).sqrt()
    assert upd[0] == pytest.approx(want.item(), rel=1e-5)


def test_sampled_update_ratio_close_to_exact(tmp_path):
    """Large tensors keep only a fixed subset of elements before the step; the ratio stays within 10%."""
    import trainscope
    from trainscope.probe import params as params_mod

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    assert model[0].weight.numel() > params_mod.EXACT_UPDATE_NUMEL and model[4].weight.numel() <= 4096 + 1280
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    exact: dict[int, dict[str, float]] = {}
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=4):
        for step in range(9):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            before = {n: [p.detach().clone() for p in model[int(n)].parameters()] for n in ("0", "2", "4")}
            opt.step()
            exact[step] = {n: float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in
                                                   zip(model[int(n)].parameters(), bs))
                                               / sum((b ** 2).sum() for b in bs)))
                           for n, bs in before.items()}
    run = trainscope.load_run(tmp_path / "r")
    upd = run.layers[run.layers.kind == "update"]
    assert sorted(upd.step.unique()) == [0, 1, 2, 4, 8]
    for _, row in upd.iterrows():
        want = exact[int(row["step"])][row["layer"]]
        assert row["ratio"] == pytest.approx(want, rel=0.10), (row["step"], row["layer"])
    small = upd[upd.layer == "4"]  # 1280 + 10 elements: exact
    assert all(r == pytest.approx(exact[int(s)]["4"], rel=1e-5) for s, r in zip(small.step, small.ratio))
    gn = run.layers[run.layers.kind == "grad_norm"]
    assert sorted(gn.step.unique()) == list(range(9))  # every step where the global norm is computed
    total = gn.groupby("step")["norm"].apply(lambda v: float(np.sqrt((v ** 2).sum())))
    assert total.tolist() == pytest.approx(run.scalar("grad_norm").tolist(), rel=1e-5)
