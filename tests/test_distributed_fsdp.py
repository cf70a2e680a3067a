"""FSDP2 (`fully_shard`, DTensor parameters) on 2 gloo ranks on CPU: each rank records its shards,
`load_run` merges them, and the merged statistics equal those of the same model trained unsharded
on the same global batch in one process."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainscope

torch.set_num_threads(1)

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="torch.distributed.fsdp is not in this torch build")
if not hasattr(fsdp, "fully_shard"):  # FSDP2 is public from torch 2.6 on
    pytest.skip(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2)",
                allow_module_level=True)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORLD = 2
STEPS = 6
BATCH = 8  # per rank; the reference trains on both ranks' batches at once
MAX_NORM = 0.5  # clip_grad_norm_ is active on some steps: the pre- and post-clip norms both count


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    # 16 -> 3: the last layer's 3 rows split 2 / 1 over the ranks (an uneven shard)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        x = torch.randn(WORLD * BATCH, 8, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


def _train(model: nn.Module, run_dir: Path, batches: list, zero_grad: bool = True) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    with trainscope.watch(model, run_dir, optimizer=opt, every=2, on_finding="ignore") as probe:
        for x, y in batches:
            if zero_grad:
                opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            opt.step()
            probe.log(train_loss=loss)


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.device_mesh import init_device_mesh

    try:
        hsdp = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))
        for name, zero_grad, mesh in (("fsdp", True, None), ("stale", False, None), ("hsdp", True, hsdp)):
            model = _mlp()
            for m in model:
                if isinstance(m, nn.Linear):
                    fully_shard(m, mesh=mesh)
            fully_shard(model, mesh=mesh)  # parameters are now DTensors sharded on dim 0 (HSDP: and replicated)
            mine = [(x[rank * BATCH:(rank + 1) * BATCH], y[rank * BATCH:(rank + 1) * BATCH]) for x, y in _batches()]
            _train(model, Path(out) / name, mine, zero_grad=zero_grad)
        _watched_before_sharding(Path(out) / "late", rank)
    finally:
        dist.destroy_process_group()


def _watched_before_sharding(run_dir: Path, rank: int) -> None:
    from torch.distributed.fsdp import fully_shard

    model = _mlp()
    probe = trainscope.watch(model, run_dir, on_finding="ignore")  # too early: fully_shard replaces the parameters
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in _batches()[:3]:
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[mine]), y[mine])
        loss.backward()
        opt.step()
        probe.log(train_loss=loss)
    probe.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(out)), nprocs=WORLD, join=True)
    _train(_mlp(), out / "ref", _batches())  # unsharded, one process, the global batch, mean loss
    return out


def _by_step(run, kind: str, layer: str, rank: int | None = None):
    df = run.layers[(run.layers.kind == kind) & (run.layers.layer == layer)]
    if rank is not None:
        df = df[df["rank"] == rank]
    return df.set_index("step").sort_index()


@pytest.mark.parametrize("name, replicas", [("fsdp", 1), ("hsdp", WORLD)])
def test_fsdp2_merged_norms_equal_the_unsharded_model(runs, name, replicas):
    # hsdp: a (replicate 2, shard 1) mesh: every rank holds whole tensors, counted once in the merge
    run, ref = trainscope.load_run(runs / name), trainscope.load_run(runs / "ref")
    assert run.meta["world_size"] == WORLD and set(run.meta["ranks"]) == {"0", "1"}
    assert run.meta["sharding"]["layers"] == {"0": replicas, "2": replicas, "4": replicas}
    assert not [n for n in run.meta.get("notes") or [] if "sharded" in n]  # both ranks wrote every group: all merged
    for rank in range(WORLD):
        for scalar in ("grad_norm", "grad_norm_clipped"):
            got = run.scalars[(run.scalars.name == scalar) & (run.scalars["rank"] == rank)].set_index("step")["value"]
            want = ref.scalars[ref.scalars.name == scalar].set_index("step")["value"]
            assert list(got.index) == list(want.index) == list(range(STEPS)), scalar
            np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-4, err_msg=f"{scalar} rank {rank}")
        for layer in ("0", "2", "4"):
            for kind, stats in (("grad_norm", ["norm", "numel"]),
                                ("grad", ["norm", "numel", "mean", "std", "max_abs", "frac_zero"]),
                                ("weight", ["norm", "numel", "mean", "std", "max_abs"]),
                                ("update", ["norm", "ratio"])):
                got, want = _by_step(run, kind, layer, rank), _by_step(ref, kind, layer)
                assert list(got.index) == list(want.index) and len(got), (kind, layer)
                for stat in stats:
                    # the grad mean of a layer is ~1e-9 against a 0.1 norm: compare it at the norm's scale
                    atol = 1e-6 * float(want["norm"].abs().max()) if stat == "mean" else 0.0
                    np.testing.assert_allclose(got[stat].to_numpy(), want[stat].to_numpy(), rtol=1e-4, atol=atol,
                                               err_msg=f"{kind} {stat} layer {layer} rank {rank}")
    assert set(run.layers.module_type) == set(ref.layers.module_type) == {"Linear", "ReLU"}  # not FSDPLinear
    clipped = run.scalars[run.scalars.name == "loop/clipped"]["value"]
    assert clipped.max() == 1.0  # the clip was active on some steps, as in the reference


def test_fsdp2_raw_rows_are_the_local_shards(runs):
    # The store keeps each rank's shard (read here straight from the chunks); load_run merges them.
    import pandas as pd

    raw = pd.concat([pd.read_parquet(p) for p in sorted((runs / "fsdp" / "layers").glob("*.parquet"))])
    last = raw[(raw.kind == "grad_norm") & (raw.layer == "4") & (raw.step == 0)].set_index("rank")
    assert last.loc[0, "numel"] == 2 * 16 + 2 and last.loc[1, "numel"] == 1 * 16 + 1  # 3 rows split 2 / 1
    merged = _by_step(trainscope.load_run(runs / "fsdp"), "grad_norm", "4", 0).loc[0]
    assert merged["numel"] == 3 * 16 + 3
    assert merged["norm"] == pytest.approx(float(np.sqrt((last["norm"] ** 2).sum())), rel=1e-6)


def test_fsdp2_run_diagnoses_like_the_unsharded_one(runs):
    found = trainscope.diagnose(runs / "fsdp")
    ref = trainscope.diagnose(runs / "ref")
    assert "missing-zero-grad" not in {f.name for f in found}
    assert {f.name for f in found} == {f.name for f in ref}


def test_fsdp2_missing_zero_grad_is_still_seen(runs):
    # The stale-gradient check reads the sentinel differently under FSDP2 (clock.py): it must still fire.
    names = {f.name for f in trainscope.diagnose(runs / "stale")}
    assert "missing-zero-grad" in names


def test_watch_before_fully_shard_is_reported(runs):
    run = trainscope.load_run(runs / "late")
    errors = run.events[run.events.kind == "hook_error"]["detail"].tolist()
    assert any("call trainscope.watch() after fully_shard" in e for e in errors), errors
    assert "probe-degraded" in {f.name for f in trainscope.diagnose(run)}
