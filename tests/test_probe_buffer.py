"""RunBuffer: one host copy per flush, values land in the right rows, first NaN becomes an event."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import trainscope
from trainscope.probe.buffer import RunBuffer, raw_to_host, to_host
from trainscope.probe.guard import HookGuard
from trainscope.probe import stats as st
from trainscope.store.writer import RunWriter


def test_to_host_mixes_numbers_and_tensors():
    vals = [1.5, torch.tensor(2.0), 3, torch.tensor(float("nan"), dtype=torch.float64)]
    out = to_host(vals)
    assert out[:3] == [1.5, 2.0, 3.0] and math.isnan(out[3])
    parts = raw_to_host([torch.arange(3.0), torch.tensor([7.0]), torch.zeros(0)])
    assert [p.tolist() for p in parts] == [[0.0, 1.0, 2.0], [7.0], []]


def test_flush_writes_rows_and_flags_first_nonfinite(tmp_path):
    buf = RunBuffer(RunWriter(tmp_path), HookGuard(), flush_seconds=1e9, flush_rows=10**9, t0=time.monotonic())
    buf.scalar((0, "train_loss", torch.tensor(1.25), float("nan"), 0.0))
    buf.scalar((1, "train_loss", torch.tensor(float("inf")), float("nan"), 0.0))
    with pytest.warns(RuntimeWarning, match=r"probe.log\(name=...\) dropped: a string 'not a number'"):
        buf.log(2, 0.0, {"val_loss": 0.5, "name": "not a number"})  # checked when logged, alone
    g = torch.tensor([[0.0, 3.0], [4.0, 0.0]])
    buf.layer(0, "fc", "grad", "Linear", *st.raw_moments(g))
    buf.order = {"fc": 0}
    assert not buf.due()
    buf.flush()
    (tmp_path / "meta.json").write_text('{"schema_version": "1.0", "status": "finished"}')
    run = trainscope.load_run(tmp_path)
    assert run.scalar("train_loss").iloc[0] == 1.25 and np.isinf(run.scalar("train_loss").iloc[1])
    assert run.scalar("val_loss").tolist() == [0.5]
    row = run.layers.iloc[0]
    assert row["norm"] == pytest.approx(5.0) and row["frac_zero"] == 0.5 and row["order"] == 0
    ev = run.events_of("nonfinite")
    assert len(ev) == 1 and ev.iloc[0]["step"] == 1
