"""LoopFacts through the probe: mode changes, grad reset, backwards and batch size per step."""
from __future__ import annotations

import torch
from torch import nn

import trainscope


def test_mode_reset_backwards_and_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for step, (bs, reset, mode) in enumerate([(8, True, True), (4, False, True), (6, True, False)]):
            model.train(mode)
            if reset:
                opt.zero_grad()
            for _ in range(step + 1):
                model(torch.randn(bs, 4)).sum().backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("loop/batch_size").tolist() == [8, 4, 6]
    assert run.scalar("loop/backwards").tolist() == [1, 2, 3]
    assert run.scalar("loop/grad_reset").tolist() == [0.0, 1.0]  # step 0 has nothing to compare with
    assert run.scalar("loop/training").tolist() == [1.0, 1.0, 0.0]
    assert run.events_of("mode")[["step", "value"]].values.tolist() == [[2, 0.0]]
    assert run.scalar("lr/0").tolist() == [0.01] * 3
