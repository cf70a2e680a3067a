"""Step timing (time/data, time/forward, time/backward, time/optimizer) and the performance rules:
a loop whose DataLoader sleeps a few ms per batch is input-pipeline-bound; the same loop without the
sleep is not (issue 12 §1)."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import trainscope
from trainscope.rules.engine import diagnose_report


class Rows(Dataset):
    def __init__(self, n: int = 1024, sleep: float = 0.0) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 20, generator=g)
        self.y = (self.x[:, :4].argmax(1))
        self.sleep = sleep

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _collate_sleeping(sleep: float):
    def collate(items):
        if sleep:
            time.sleep(sleep)  # a slow decode/augment step in the input pipeline
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
    return collate


def _train(run_dir, sleep: float, epochs: int = 2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(Rows(), batch_size=32, shuffle=True, collate_fn=_collate_sleeping(sleep),
                        generator=torch.Generator().manual_seed(0))
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=loss_fn, every=50) as probe:
        for epoch in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                probe.log(train_loss=loss)
            probe.log(epoch=epoch, val_loss=loss)
    return trainscope.load_run(run_dir)


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("t") / "slow", sleep=0.004)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("t") / "fast", sleep=0.0)


def test_the_probe_times_every_step(slow):
    names = set(slow.scalar_names())
    for n in ("time/data", "time/forward", "time/backward", "time/optimizer", "time/step"):
        assert n in names, n
    data, step = slow.scalar("time/data"), slow.scalar("time/step")
    assert len(data) >= 60 and 0 not in data.index  # no previous step before step 0
    assert data.median() >= 0.0035  # the 4 ms sleep shows up as waiting for data
    parts = sum(slow.scalar(n).reindex(step.index).fillna(0) for n in
                ("time/data", "time/forward", "time/backward", "time/optimizer"))
    assert ((parts - step).abs() < 1e-6).all()  # the four parts add up to the step
    facts = slow.events[slow.events["kind"] == "perf_facts"]
    assert len(facts) == 1 and '"device": "cpu"' in facts.iloc[0]["detail"]


def test_sleeping_loader_is_input_pipeline_bound(slow):
    found = {f.name: f for f in trainscope.diagnose(slow)}
    f = found.get("input-pipeline-bound")
    assert f is not None and f.severity.value == "warning", sorted(found)
    assert float(f.evidence_dict["data_share"]) > 0.5 and "num_workers" in f.fixes[0]


def test_same_loop_without_the_sleep_is_not(fast):
    report = diagnose_report(fast)
    assert "input-pipeline-bound" not in {f.name for f in report.findings}
    assert "input-pipeline-bound" not in {s.name for s in report.skipped}  # it ran and stayed silent
    assert fast.scalar("time/data").median() < 0.001


def test_gpu_rules_do_not_run_on_cpu(fast):
    report = diagnose_report(fast)
    names = {f.name for f in report.findings}
    assert "host-sync-bound" not in names and "performance-hints" not in names


def test_report_has_where_the_time_goes(slow, tmp_path):
    from trainscope.report import write_report

    html = write_report(slow, trainscope.diagnose(slow), tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="fig-time"' in html and "Where the time goes" in html
