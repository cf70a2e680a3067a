"""Issue 10 item 7: the probe's own degradation is a finding (probe-degraded, TS701), and sparse or
complex tensors no longer degrade it."""
from __future__ import annotations

import warnings

import torch
from torch import nn

import trainscope
from trainscope.probe import params as params_mod
from trainscope.rules.engine import diagnose_report


class SparseComplex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, sparse=True)
        self.head = nn.Linear(8, 2)
        self.phase = nn.Parameter(torch.randn(4, dtype=torch.cfloat))

    def forward(self, idx):
        return self.head(self.emb(idx).mean(1)) + self.phase.abs().mean()


def _train(path, model, steps=12, log_bad=False):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainscope.watch(model, path, optimizer=opt, every=2) as probe:
        for s in range(steps):
            opt.zero_grad()
            x = torch.randint(0, 50, (16, 3)) if isinstance(model, SparseComplex) else torch.randn(16, 4)
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
            if log_bad:
                probe.log(note="epoch done")
    return trainscope.load_run(path)


def test_sparse_and_complex_gradients_get_statistics_without_torch_warnings(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torch "discards the imaginary part" warning fails the test
        run = _train(tmp_path / "r", SparseComplex())
    assert run.meta["disabled_hooks"] == [] and run.events_of("hook_error").empty
    assert run.scalar("grad_norm").index.tolist() == list(range(12))
    grads = run.layers[(run.layers.kind == "grad")]
    emb = grads[grads.layer == "emb"]
    assert len(emb) >= 5 and (emb["norm"] > 0).all() and emb["numel"].max() <= 16 * 3 * 8  # coalesced rows
    root = run.layers[(run.layers.layer == "") & (run.layers.kind == "weight")]  # the complex parameter
    assert not root.empty and (root["mean"] > 0).all()  # magnitudes, not the real part
    assert "probe-degraded" not in {f.name for f in diagnose_report(run).findings}


def test_a_failed_hook_is_reported_with_since_when_and_what_is_missing(tmp_path, monkeypatch):
    real = params_mod.ParamStats.on_step_begin

    def broken(self, step, record):
        if step == 3:
            raise RuntimeError("simulated failure\nwith a long second line")
        return real(self, step, record)

    monkeypatch.setattr(params_mod.ParamStats, "on_step_begin", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = _train(tmp_path / "r", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    report = diagnose_report(run, select=["probe-degraded"])
    (f,) = report.findings
    assert f.name == "probe-degraded" and f.code == "TS701" and f.severity.value == "warning"
    ev = f.evidence_dict
    assert ev["hook"] == "step_pre" and ev["since_step"] == 3 and "grad_norm" in ev["missing"]
    assert "simulated failure" in f.message and "\n" not in f.message and "exploding-gradients" in f.message
    assert f.steps == (3, 11)


def test_dropped_log_values_are_an_info_finding_and_logs_skip_the_rule(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = _train(tmp_path / "r", nn.Sequential(nn.Linear(4, 2)), log_bad=True)
    (f,) = diagnose_report(run, select=["probe-degraded"]).findings
    assert f.severity.value == "info" and "note" in f.message and "string" in f.message
    csv = tmp_path / "log.csv"
    csv.write_text("step,loss\n" + "\n".join(f"{i},{1 / (i + 1)}" for i in range(20)))
    report = diagnose_report(csv, select=["probe-degraded"])
    assert [s.reason for s in report.skipped] == ["an imported log has no probe"]
