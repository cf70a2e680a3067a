"""The batched statistics (stats.MomentReducer) equal the same statistics computed tensor by tensor,
independently, in float64 numpy: on the CPU path (numpy views, measured at the hooks) and on the
accelerator path (packed rows, outputs reduced after the forward), which CPU tensors take when
host.FREE_ON_CPU is off."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.probe import host
from trainscope.probe import stats as st


def _ref(arrays: list[np.ndarray]) -> dict[str, float]:
    a = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in arrays])
    return {"norm": np.linalg.norm(a), "mean": a.mean(), "std": a.std(ddof=1) if a.size > 1 else np.nan, "max_abs": np.abs(a).max(),
            "frac_zero": float((a == 0).mean()), "numel": a.size}


def _check(row, want: dict[str, float], what) -> None:
    for key, val in want.items():
        assert row[key] == pytest.approx(val, rel=1e-4, abs=1e-6, nan_ok=True), (what, key)


@pytest.mark.parametrize("free", [True, False], ids=["cpu-path", "accelerator-path"])
def test_reducer_rows_equal_numpy(monkeypatch, free):
    """Sizes across the packing rows and chunks (a tiny budget), |mean| >> std, zeros, NaN and Inf."""
    monkeypatch.setattr(host, "FREE_ON_CPU", free)
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300, 7, generator=g), torch.randn(5, generator=g), torch.zeros(100),
               torch.randn(3000, generator=g) * 1e-3 + 1.0, torch.relu(torch.randn(4096, generator=g)),
               torch.randn(8, 3, 5, 5, generator=g), torch.full((513,), 2.5), torch.randn(1, generator=g),
               torch.randn(10000, generator=g) * 1e-3 - 2.0, torch.relu(torch.randn(9000, generator=g))]
    reducer = st.MomentReducer(budget=5 * st.ROW * 3)  # 3 rows a chunk, 7680-byte pieces: tensors split
    rows = st._host_array(reducer.rows(tensors)).reshape(len(tensors), st.N_MOMENTS)
    for k, t in enumerate(tensors):
        got = dict(zip(st.LAYER_STATS, st.finalize_moments(rows[k], (t.numel(),))))
        _check(got, _ref([t.numpy()]), k)
        assert got["nonfinite"] == 0
    layer = st.finalize_moments(rows[3:5].reshape(-1), (3000, 4096))  # two rows, two shifts: one layer
    _check(dict(zip(st.LAYER_STATS, layer)), _ref([tensors[3].numpy(), tensors[4].numpy()]), "layer")
    bad = torch.randn(64, 40, generator=g)
    bad[0, 0], bad[3, 1], bad[60, 39] = float("nan"), float("inf"), -float("inf")
    got = dict(zip(st.LAYER_STATS, st.finalize_moments(st._host_array(reducer.rows([bad])), (bad.numel(),))))
    assert got["nonfinite"] == 3 and np.isnan(got["norm"])


class _Mixed(nn.Module):
    """Embedding -> Conv1d -> LayerNorm -> Linear -> ReLU(inplace=True) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 32)
        self.act = nn.ReLU(inplace=True)  # changes fc's output after fc's hook
        self.out = nn.Linear(32, 5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.emb(idx).transpose(1, 2)).transpose(1, 2)
        return self.out(self.act(self.fc(self.ln(x)))).mean(dim=1)


@pytest.mark.parametrize("free", [True, False], ids=["cpu-path", "accelerator-path"])
def test_recorded_statistics_equal_per_tensor_reference(tmp_path, monkeypatch, free):
    monkeypatch.setattr(host, "FREE_ON_CPU", free)
    torch.manual_seed(0)
    model = _Mixed()
    with torch.no_grad():
        model.ln.weight.add_(3.0)  # |mean| >> std: the shifted sums
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    idx = torch.randint(0, 50, (6, 12))
    y = torch.randint(0, 5, (6,))
    seen: dict[str, np.ndarray] = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, a, o, n=n: seen.__setitem__(n, o.detach().numpy().copy())) for n in ("emb", "conv", "ln", "fc", "act")]
    expected = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1, flush_seconds=1e9) as probe:
        for _ in range(4):
            opt.zero_grad()
            before = {n: [p.detach().numpy().copy() for p in getattr(model, n).parameters()]
                      for n in ("emb", "conv", "ln", "fc", "out")}
            loss = nn.functional.cross_entropy(model(idx), y)
            loss.backward()
            grads = {n: [p.grad.numpy().copy() for p in getattr(model, n).parameters()] for n in before}
            opt.step()
            after = {n: [p.detach().numpy().copy() for p in getattr(model, n).parameters()] for n in before}
            expected.append((dict(seen), before, grads, after))
            probe.log(train_loss=loss)
    for h in hooks:
        h.remove()
    L = trainscope.load_run(tmp_path / "r").layers
    for step, (acts, before, grads, after) in enumerate(expected):
        at = L[L.step == step].set_index(["layer", "kind"])
        for name in before:
            _check(at.loc[(name, "grad")], _ref(grads[name]), (step, name, "grad"))
            _check(at.loc[(name, "weight")], _ref(before[name]), (step, name, "weight"))
            d2 = sum(float(((a.astype(np.float64) - b) ** 2).sum()) for a, b in zip(after[name], before[name]))
            w2 = sum(float((b.astype(np.float64) ** 2).sum()) for b in before[name])
            assert at.loc[(name, "update"), "ratio"] == pytest.approx(np.sqrt(d2 / w2), rel=1e-4), (step, name)
        for name, out in acts.items():
            row = at.loc[(name, "activation")]
            _check(row, _ref([out]), (step, name, "activation"))
            units = out.reshape(-1, out.shape[-1]) if name != "conv" else out.transpose(1, 0, 2).reshape(out.shape[1], -1).T
            assert row["frac_dead"] == pytest.approx(float((units.max(axis=0) <= 0).mean())), (step, name)
        assert acts["fc"].min() < 0  # fc's own output (before the in-place ReLU), not the ReLU's


def _random_raw(rng: np.random.Generator, kind: str, k: int, zero: set[int]) -> tuple[np.ndarray, object]:
    """A raw row as the buffer holds it, with NaN/Inf, zero counts and empty tensors mixed in."""
    if kind in ("grad", "weight"):
        rows = rng.normal(size=(k, st.N_MOMENTS)) * rng.choice([1e-8, 1.0, 1e6], size=(k, 1))
        rows[:, 1] = np.abs(rows[:, 1]); rows[:, 3] = np.abs(rows[:, 3])
        ns = [0 if j in zero else int(rng.integers(1, 5000)) for j in range(k)]
        rows[:, 6] = [rng.integers(0, n + 1) for n in ns]
        rows[:, 7] = rng.choice([0, 0, 0, 3], size=k)
        if rng.random() < 0.1:
            rows[rng.integers(k), rng.integers(st.N_MOMENTS)] = rng.choice([np.nan, np.inf, -np.inf])
        return rows.reshape(-1), tuple(ns)
    if kind == "activation":
        raw = np.abs(rng.normal(size=st.N_ACTIVATION)) * 100
        numel = 0 if zero else int(rng.integers(1, 10 ** 6))
        units = int(rng.choice([0, 1, 7, 256, -64]))
        raw[st.N_MOMENTS + 1] = rng.choice([np.nan, 3.0, 0.0])
        return raw, (numel, units)
    if kind == "update":
        return np.abs(rng.normal(size=(k, st.N_UPDATE))).reshape(-1) * rng.choice([0.0, 1e-12, 1.0]), int(rng.integers(1, 10 ** 7))
    return np.abs(rng.normal(size=k)) * rng.choice([0.0, 1.0, np.inf]), int(rng.integers(1, 10 ** 7))  # grad_norm


def test_finalize_rows_equals_the_one_row_forms_bit_for_bit():
    """The flush finalizes all rows of a kind together; every number must be the one-row form's, exactly."""
    rng = np.random.default_rng(7)
    kinds, raws, infos = [], [], []
    for _ in range(3000):
        kind = str(rng.choice(["grad", "weight", "activation", "update", "grad_norm"]))
        k = int(rng.choice([1, 1, 2, 2, 3, 5, 7, 8, 12, 20]))
        zero = set(rng.choice(k, size=int(rng.integers(0, k + 1)), replace=False).tolist()) if rng.random() < 0.2 else set()
        raw, info = _random_raw(rng, kind, k, zero)
        kinds.append(kind); raws.append(raw); infos.append(info)
    kinds.append("grad"); raws.append(np.asarray([0.0, 4.0, 1.0, 2.0, -1.0, 1.0, 3.0, 0.0])); infos.append((3, 5))  # shared shift
    got = st.finalize_rows(kinds, raws, infos)
    one = {"grad": st.finalize_moments, "weight": st.finalize_moments, "update": st.finalize_update,
           "grad_norm": st.finalize_norms, "activation": lambda r, i: st.finalize_activation(r, *i)}
    with np.errstate(all="ignore"):
        want = np.asarray([one[k](r, i) for k, r, i in zip(kinds, raws, infos)])
    assert got.shape == want.shape
    differs = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    assert not differs.any(), [(kinds[i], infos[i]) for i in np.nonzero(differs.any(axis=1))[0][:5]]
