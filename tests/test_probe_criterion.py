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


def test_target_stats_host_and_device_paths_agree(monkeypatch):
    """The CPU path (numpy: bincount for class ids, unique otherwise) and the device path (sorted counts,
    no host sync) give the same mode and share, ties to the smallest class, negative ids included."""
    from trainscope.probe import host
    from trainscope.probe.criterion import target_stats

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 5, (64,), generator=g) for _ in range(20)]
    batches += [torch.tensor([1, 2, 1, 2]), torch.tensor([-100, 2, 2, -100, -100]), torch.tensor([70000, 3, 70000])]
    on_host = [[(k, float(v)) for k, v in target_stats(t)] for t in batches]
    monkeypatch.setattr(host, "FREE_ON_CPU", False)
    on_device = [[(k, float(v)) for k, v in target_stats(t)] for t in batches]
    for h, d in zip(on_host, on_device):  # the device share is a float32 division
        assert [k for k, _ in h] == [k for k, _ in d] and [v for _, v in h] == pytest.approx([v for _, v in d])
    assert on_host[-3] == [("batch/target_mode_frac", 0.5), ("batch/target_mode", 1.0)]
