"""Loops the probe must read right: closures (LBFGS, optimizer.step(closure)), gradient accumulation with and
without an optimizer, model(**batch) with the model's own outputs.loss, live findings, a watch() that
cannot attach, and ranks that only know who they are after init_process_group (mp.spawn)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import trainscope
from trainscope.rules.finding import Severity

torch.set_num_threads(1)


def _data(n: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def _mlp(seed: int = 0, softmax: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def _grad_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


# ----------------------------------------------------------------------------- closures
@pytest.mark.parametrize("opt_name", ["LBFGS", "SGD"])
def test_closure_step_statistics_belong_to_the_step_of_their_backward(tmp_path, opt_name):
    model = _mlp()
    x, y = _data()
    crit = nn.CrossEntropyLoss()
    if opt_name == "LBFGS":
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected, first = [], [True]

    def closure():
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        if first[0]:  # the first evaluation of this step, at the weights the step starts from
            first[0] = False
            w0 = torch.cat([p.detach().flatten() for p in model[0].parameters()]).norm()
            expected.append((_grad_norm(model), float(w0)))
        return loss

    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, every=1) as probe:
        for step in range(4):
            first[0] = True
            loss = opt.step(closure)
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    gn = run.scalar("grad_norm")
    assert gn.index.tolist() == [0, 1, 2, 3]  # step 0 has gradients too (the closure computed them)
    L = run.layers
    for step, (norm, w0) in enumerate(expected):
        assert gn[step] == pytest.approx(norm, rel=1e-4), step  # this step's gradients, not last step's
        w = L[(L.step == step) & (L.layer == "0") & (L.kind == "weight")]["norm"].iloc[0]
        assert w == pytest.approx(w0, rel=1e-5), step  # the weights the backward saw, before the update
    assert (run.scalar("loop/backwards") >= 1).all()
    assert (run.scalar("loop/grad_reset").iloc[1:] == 1).all()
    assert not run.layers[run.layers.kind == "update"].empty


# ----------------------------------------------------------------------------- accumulation
def _accumulate(tmp_path, name: str, *, with_optimizer: bool, mark: bool, zero_grad: bool = True):
    model = _mlp()
    x, y = _data(128)
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kw = {"optimizer": opt} if with_optimizer else {}
    with trainscope.watch(model, tmp_path / name, criterion=crit, **kw) as probe:
        for step in range(8):
            for i in range(4):  # 4 micro-batches per optimizer step
                xb, yb = x[32 * i:32 * (i + 1)], y[32 * i:32 * (i + 1)]
                (crit(model(xb), yb) / 4).backward()
            if mark:
                probe.step()
            opt.step()
            if zero_grad:
                opt.zero_grad()
            probe.log(train_loss=crit(model(x), y).detach())
    return trainscope.load_run(tmp_path / name)


def _findings(run) -> dict[str, Severity]:
    return {f.name: f.severity for f in trainscope.diagnose(run)}


def test_accumulation_with_optimizer_is_clean(tmp_path):
    run = _accumulate(tmp_path, "opt", with_optimizer=True, mark=False)
    assert run.meta["steps"] == 8 and (run.scalar("loop/backwards") == 4).all()
    assert (run.scalar("loop/grad_reset").iloc[1:] == 1).all()
    assert "missing-zero-grad" not in _findings(run)


def test_accumulation_marked_with_probe_step_is_clean(tmp_path):
    run = _accumulate(tmp_path, "marked", with_optimizer=False, mark=True)
    assert run.meta["steps"] == 8 and (run.scalar("loop/backwards") == 4).all()
    assert (run.scalar("loop/grad_reset").iloc[1:] == 1).all()
    assert "missing-zero-grad" not in _findings(run)


def test_accumulation_without_optimizer_or_marks_is_not_a_missing_zero_grad(tmp_path):
    run = _accumulate(tmp_path, "auto", with_optimizer=False, mark=False)
    assert "missing-zero-grad" not in _findings(run)
    reset = run.scalar("loop/grad_reset")
    assert (reset == 1).all() and len(reset) == 7  # judged only at the first backward after each update
    # the control: the same loop without zero_grad is still caught
    bad = _accumulate(tmp_path, "bad", with_optimizer=False, mark=True, zero_grad=False)
    assert _findings(bad).get("missing-zero-grad") is not None


# ----------------------------------------------------------------------------- model(**batch), outputs.loss
class _HFStyle(nn.Module):
    """Takes keyword inputs and returns a dict with its own loss, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, features=None, labels=None):
        logits = self.net(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def test_kwargs_inputs_and_the_models_own_loss(tmp_path):
    model = _HFStyle()
    x, y = _data()
    x = x * 50 + 20  # unnormalized: the input scale must be seen through the keyword argument
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):  # the user logs nothing
        for _ in range(5):
            opt.zero_grad()
            out = model(features=x[:32], labels=y[:32])
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"]))
            with torch.no_grad():
                model(features=x[32:], labels=y[32:])  # an evaluation forward: not a training loss
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("train_loss").tolist() == pytest.approx(losses, rel=1e-6)
    assert run.scalar("loop/batch_size").tolist() == [32] * 5
    scale = json.loads(run.events_of("input_scale").iloc[0]["detail"])
    assert scale["mean"] == pytest.approx(float(x[:32].mean()), rel=1e-4)

    model = _HFStyle()  # a user who logs the loss: only theirs is kept
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with trainscope.watch(model, tmp_path / "mine", optimizer=opt) as probe:
        for _ in range(3):
            opt.zero_grad()
            out = model(features=x[:32], labels=y[:32])
            out["loss"].backward()
            opt.step()
            probe.log(loss=out["loss"])
    run = trainscope.load_run(tmp_path / "mine")
    assert "train_loss" not in run.scalar_names() and len(run.scalar("loss")) == 3


# ----------------------------------------------------------------------------- live findings
def _softmax_loop(run_dir, steps: int = 6, **kw) -> int:
    model = _mlp(softmax=True)
    x, y = _data()
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    done = 0
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=crit, **kw) as probe:
        for _ in range(steps):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
            done += 1
    return done


def test_live_finding_printed_once_by_step_2(tmp_path, capsys):
    assert _softmax_loop(tmp_path / "warn") == 6
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("trainscope: TS601")]
    assert len(lines) == 1, err
    step = int(lines[0].split("(step ")[1].split(")")[0])
    assert step <= 2 and "softmax before CrossEntropyLoss" in lines[0]
    run = trainscope.load_run(tmp_path / "warn")
    assert run.events_of("live_finding")["detail"].str.contains("TS601").any()
    _softmax_loop(tmp_path / "quiet", on_finding="ignore")
    assert "trainscope: TS601" not in capsys.readouterr().err


def test_live_finding_raise_stops_the_run(tmp_path):
    with pytest.raises(trainscope.TrainscopeFinding) as info:
        _softmax_loop(tmp_path / "r", steps=50, on_finding="raise")
    assert info.value.code == "TS601" and info.value.rule == "softmax-before-cross-entropy" and info.value.step <= 2
    run = trainscope.load_run(tmp_path / "r")  # what was recorded is kept
    assert run.status == "stopped" and run.meta["steps"] <= 3
    names = {f.name for f in trainscope.diagnose(run)}
    assert "softmax-before-cross-entropy" in names


def test_live_divergence_and_nan(tmp_path, capsys):
    model = _mlp()
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=50.0)  # blows up
    with trainscope.watch(model, tmp_path / "r", optimizer=opt) as probe:
        for _ in range(30):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    err = capsys.readouterr().err
    assert "trainscope: TS102" in err or "trainscope: TS205" in err, err


# ----------------------------------------------------------------------------- watch() never breaks training
class _WrappedOptimizer:
    """An optimizer wrapper that is not a torch Optimizer and has no step hooks."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        self.param_groups = inner.param_groups

    def step(self):
        self.inner.step()

    def zero_grad(self):
        self.inner.zero_grad()


def test_watch_with_an_unhookable_optimizer_warns_once_and_records(tmp_path):
    model = _mlp()
    x, y = _data()
    opt = _WrappedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trainscope.watch(model, tmp_path / "r", optimizer=opt) as probe:
            for _ in range(3):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                probe.log(train_loss=loss)
    msgs = [str(w.message) for w in caught if "trainscope" in str(w.message)]
    assert len(msgs) == 1 and "_WrappedOptimizer" in msgs[0], msgs
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["steps"] == 3 and len(run.scalar("train_loss")) == 3


def test_watch_that_cannot_attach_returns_a_disabled_probe(tmp_path):
    model = _mlp()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = trainscope.watch(model, tmp_path / "r", every="often")  # a bad option
        probe.log(train_loss=1.0)
        probe.step()
        probe.close()
    assert sum("trainscope" in str(w.message) for w in caught) == 1
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "disabled" and "often" in meta["error"]


def test_accelerate_optimizer_is_unwrapped(tmp_path):
    accelerate = pytest.importorskip("accelerate", reason="accelerate's AcceleratedOptimizer")
    from accelerate.optimizer import AcceleratedOptimizer

    model = _mlp()
    x, y = _data()
    from accelerate import Accelerator

    Accelerator(cpu=True)  # accelerate's state must exist before its optimizer wrapper
    opt = AcceleratedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), device_placement=False)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt) as probe:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["optimizer"]["class"] == "AdamW" and run.meta["steps"] == 3
    assert accelerate


# ----------------------------------------------------------------------------- mp.spawn
def _spawned(rank: int, world: int, port: int, cwd: str) -> None:
    import torch.distributed as dist

    os.chdir(cwd)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = trainscope.watch(model, every=2)  # before init_process_group, RANK unset, default run dir
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    for _ in range(4):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        probe.log(train_loss=loss)
    probe.close()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~30 s on a busy 2-core machine
@pytest.mark.skipif(not os.environ.get("TRAINSCOPE_SLOW"), reason="set TRAINSCOPE_SLOW=1 (about 30 s)")
def test_mp_spawn_ranks_share_one_default_run_dir(tmp_path):
    import socket

    import torch.multiprocessing as mp

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert key not in os.environ
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    runs = [p for p in (tmp_path / "runs").iterdir()]
    assert len(runs) == 1, runs  # both ranks agreed on the directory
    run = trainscope.load_run(runs[0])
    assert set(run.meta["ranks"]) == {"0", "1"}
    assert sorted(run.scalars["rank"].unique()) == [0, 1]
    assert Path(runs[0] / "meta-r1.json").exists()
    assert all(v["steps"] == 4 for v in run.meta["ranks"].values())


# ----------------------------------------------------------------------------- torch.compile
def test_compiled_model_gets_layer_order_and_gradient_flow_findings(tmp_path):
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.Sigmoid()]
    for _ in range(10):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))  # deep sigmoid MLP: vanishing gradients
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, _ = _data(256)
    x = torch.cat([x, x[:, :4]], dim=1)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    with trainscope.watch(compiled, tmp_path / "r", optimizer=opt, every=5) as probe:
        for s in range(30):
            xb, yb = x[s % 4 * 64:(s % 4 + 1) * 64], y[s % 4 * 64:(s % 4 + 1) * 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(xb), yb)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["compiled"] is True
    order = run.layers.drop_duplicates("layer").set_index("layer")["order"]
    assert (order >= 0).all() and order["0"] < order["2"] < order["22"]  # the module tree's order
    init = run.init.set_index("layer")
    assert init.loc["0", "nonlinearity"] == "sigmoid" and init.loc["22", "nonlinearity"] == "linear"
    found = {f.name for f in trainscope.diagnose(run)}
    assert "vanishing-gradients" in found, found
