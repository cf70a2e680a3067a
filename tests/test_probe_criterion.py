"""CriterionWatch: one look at what reaches an nn.Module loss, then the hook is gone."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import trainscope


def test_logits_vs_log_probs_and_target_range(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    crit = nn.NLLLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.tensor([0, 2, 1, 2, 0])
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit):
        for _ in range(2):
            opt.zero_grad()
            loss = crit(model(torch.randn(5, 4)), y)
            loss.backward()
            opt.step()
        assert len(crit._forward_hooks) == 1  # one hook for the first 200 steps (a call per step is looked at)
    assert not crit._forward_hooks  # gone at close
    run = trainscope.load_run(tmp_path / "r")
    ev = run.events_of("criterion_input")
    assert len(ev) == 1
    d = json.loads(ev.iloc[0]["detail"])
    assert d["criterion"] == "NLLLoss" and d["is_log_prob"] and not d["is_prob"]
    assert d["target_min"] == 0 and d["target_max"] == 2 and d["num_classes"] == 3
    assert d["producer"] == "LogSoftmaxBackward0" and d["shape"] == [5, 3]
    assert run.meta["num_classes"] == 3 and ev.iloc[0]["value"] == pytest.approx(d["loss"])
