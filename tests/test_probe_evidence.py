"""The issue-8 evidence the probe records, checked against independent computations on tiny real runs:
what reaches the loss (found without a `criterion`), the model output's graph, grad-disabled forwards,
parameter wiring, foreign weights, batch targets, schedule keys, all-zero gradients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import trainscope


def _events(run, kind: str) -> list[dict]:
    return [json.loads(d) for d in run.events_of(kind)["detail"]]


@pytest.mark.filterwarnings("ignore:Using a target size")  # PyTorch's own warning about this very bug
def test_functional_loss_found_and_broadcast_seen(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 5), torch.randn(32)
    with torch.no_grad():
        first_loss = F.mse_loss(model(x), y).item()
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):  # no criterion given
        for _ in range(4):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)  # (32, 1) against (32,): broadcasts to (32, 32)
            loss.backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    (ci,) = _events(run, "criterion_input")
    assert ci["criterion"] == "MSELoss" and ci["source"] == "function" and ci["function"] == "mse_loss"
    assert ci["input_shape"] == [32, 1] and ci["target_shape"] == [32] and ci["broadcast"] is True
    assert ci["target_integer"] is False and ci["dim1_size"] == 1 and ci["target_in_unit"] is False
    assert ci["loss"] == pytest.approx(first_loss, rel=1e-6)
    assert run.meta["criterion"]["class"] == "MSELoss"
    assert run.scalar("batch/target_mean").tolist() == pytest.approx([y.mean().item()] * 4, rel=1e-6)


def test_loss_module_found_softmax_over_one_unit_gives_zero_gradients(tmp_path):
    """The binary classifier ending in Softmax(dim=1) over a single unit: output 1.0, every gradient 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.BCELoss()  # not passed to watch
    x, y = torch.randn(16, 4), (torch.rand(16, 1) > 0.5).float()
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1):
        for _ in range(4):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    (ci,) = _events(run, "criterion_input")
    assert ci["criterion"] == "BCELoss" and ci["source"] == "module" and ci["dim1_size"] == 1
    assert ci["producer"] == "SoftmaxBackward0" and ci["min"] == 1.0 and ci["max"] == 1.0
    assert ci["broadcast"] is False and ci["target_in_unit"] is True and ci["target_multi_label"] is False
    grads = run.layers[run.layers.kind == "grad"]
    assert sorted(grads.step.unique()) == [0, 1, 2, 3]  # all-zero gradients are real rows
    assert (grads["norm"] == 0).all() and (grads["frac_zero"] == 1).all()
    assert (run.scalar("grad_norm") == 0).all()
    status = _events(run, "parameter_status")
    assert len(status) == 2 and run.events_of("parameter_status")["step"].tolist() == [2, 3]
    assert set(status[0]["all_zero_grad"]) == {n for n, _ in model.named_parameters()}
    assert set(status[0]["unchanged"]) == {n for n, _ in model.named_parameters()}  # Adam with zero grads
    assert status[0]["never_grad"] == [] and status[0]["n_trainable"] == 4


def test_parameter_wiring(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.unused = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(3, 3)
            self.detached = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.fc2(h) + self.detached(h.detach()).detach()  # .detach(): never a gradient

    torch.manual_seed(0)
    model = Net()
    stray = nn.Parameter(torch.zeros(3))  # an old network's parameter left in the optimizer
    opt = torch.optim.SGD([*model.fc1.parameters(), model.fc2.weight, stray], lr=0.1)  # fc2.bias left out
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    first, last = _events(run, "parameter_status")
    for st in (first, last):
        assert set(st["never_grad"]) == {"unused.weight", "unused.bias", "detached.weight", "detached.bias"}
        assert set(st["not_in_optimizer"]) == {"fc2.bias", "unused.weight", "unused.bias", "detached.weight",
                                               "detached.bias"}
        assert set(st["unchanged"]) == {"fc2.bias", "unused.weight", "unused.bias", "detached.weight",
                                        "detached.bias"}
        assert st["all_zero_grad"] == [] and st["optimizer_foreign"] == 1 and st["n_trainable"] == 8
    assert run.events_of("parameter_status")["step"].tolist() == [2, 4]


def test_foreign_weights_in_a_python_list(tmp_path):
    class ListNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.hidden = [nn.Linear(16, 16) for _ in range(2)]  # a list, not nn.ModuleList: never optimized
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = torch.relu(self.inp(x))
            for layer in self.hidden:
                h = torch.relu(layer(h))
            return self.out(h)

    torch.manual_seed(0)
    model = ListNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=nn.CrossEntropyLoss()):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    (fw,) = _events(run, "foreign_weight")
    assert fw["op"] == "linear" and fw["count"] == 4 and fw["calls"] == 2  # 2 weights + 2 biases
    assert sorted(fw["shapes"]) == [[16], [16], [16, 16], [16, 16]]
    assert run.events_of("foreign_weight")["step"].tolist() == [0]

    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))  # the fixed version: nothing foreign
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainscope.watch(model, tmp_path / "ok", optimizer=opt):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert trainscope.load_run(tmp_path / "ok").events_of("foreign_weight").empty


def test_model_output_graph_and_eval_forwards(tmp_path):
    class Rounded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return torch.round(torch.sigmoid(self.fc(x)))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.1), Rounded())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), (torch.rand(8, 1) > 0.5).float()
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for epoch in range(3):
            opt.zero_grad()
            F.binary_cross_entropy(model(x).clamp(1e-3, 1 - 1e-3), y).backward()
            opt.step()
            with torch.no_grad():
                model(x)  # validation still in train mode (the bug), epochs 0 and 1
            if epoch == 1:
                model.eval()
                with torch.inference_mode():
                    model(x)
                model.train()
    run = trainscope.load_run(tmp_path / "r")
    (out,) = _events(run, "model_output")
    assert out["producer"] == "RoundBackward0" and out["requires_grad"] is True
    ev = run.events_of("eval_forward")
    assert ev["value"].tolist() == [1.0, 0.0, 1.0] and ev["step"].tolist() == [0, 1, 2]
    d = _events(run, "eval_forward")[0]
    assert d == {"training": True, "has_dropout": True, "has_batchnorm": False, "step": 0}


def test_output_cut_from_the_graph(tmp_path):
    class Cut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.scale = nn.Linear(4, 2), nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.from_numpy(self.fc(x).detach().numpy()), self.scale  # numpy: the graph is cut

    torch.manual_seed(0)
    model = Cut()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        opt.zero_grad()
        out, scale = model(torch.randn(8, 4))
        (out.sum() * scale).sum().backward()
        opt.step()
    (out_ev,) = _events(trainscope.load_run(tmp_path / "r"), "model_output")
    assert out_ev["requires_grad"] is False and out_ev["producer"] == ""


def test_batch_targets_sorted_and_shuffled(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = torch.arange(3).repeat_interleave(40)  # class-sorted, never shuffled
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = nn.CrossEntropyLoss()
    with trainscope.watch(model, tmp_path / "sorted", optimizer=opt, criterion=crit):
        for i in range(0, 120, 20):
            opt.zero_grad()
            crit(model(x[i:i + 20]), y[i:i + 20]).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "sorted")
    assert run.scalar("batch/target_mode_frac").tolist() == [1.0] * 6
    assert run.scalar("batch/target_mode").tolist() == [0, 0, 1, 1, 2, 2]

    perm = torch.randperm(120, generator=torch.Generator().manual_seed(1))
    xs, ys = x[perm], y[perm]
    want = []
    with trainscope.watch(model, tmp_path / "shuffled", optimizer=opt):  # functional loss, found by the probe
        for i in range(0, 120, 20):
            yb = ys[i:i + 20]
            want.append(np.bincount(yb.numpy(), minlength=3).max() / 20)
            opt.zero_grad()
            F.cross_entropy(model(xs[i:i + 20]), yb).backward()
            opt.step()
    got = trainscope.load_run(tmp_path / "shuffled").scalar("batch/target_mode_frac").tolist()
    assert got == pytest.approx(want) and max(got) < 0.8


def test_schedule_keys_in_meta(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
            sched.step()
    g = trainscope.load_run(tmp_path / "r").meta["optimizer"]["param_groups"][0]
    assert g["max_lr"] == 1.0 and g["initial_lr"] == pytest.approx(1.0 / 25) and g["min_lr"] == pytest.approx(4e-6)
    assert g["max_momentum"] == 0.95 and g["base_momentum"] == 0.85


def test_loss_inside_the_model_is_found(tmp_path):
    """Hugging Face style: the model computes its own loss (outputs.loss)."""

    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, labels):
            logits = self.fc(x)
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    torch.manual_seed(0)
    model = WithLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for _ in range(2):
            opt.zero_grad()
            model(x, y)["loss"].backward()
            opt.step()
    (ci,) = _events(trainscope.load_run(tmp_path / "r"), "criterion_input")
    assert ci["criterion"] == "CrossEntropyLoss" and ci["target_integer"] is True and ci["num_classes"] == 3
    assert ci["dim1_size"] == 3 and ci["broadcast"] is False


def _train_functional(model: nn.Module, run_dir=None) -> list[torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g)
    probe = trainscope.watch(model, run_dir, optimizer=opt, every=1) if run_dir else None
    for step in range(5):
        for i in range(0, 64, 32):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]) + 0.1 * nn.MSELoss()(model(x[i:i + 32]), torch.zeros(32, 4))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        with torch.no_grad():
            model(x)
    if probe:
        probe.close()
    return [p.detach().clone() for p in model.parameters()]


def test_discovery_and_clip_leave_training_bitwise_identical(tmp_path):
    def mlp() -> nn.Module:
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(11)
        plain = _train_functional(mlp())
        torch.manual_seed(11)
        watched = _train_functional(mlp(), tmp_path / "r")
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    run = trainscope.load_run(tmp_path / "r")
    names = {d["criterion"] for d in _events(run, "criterion_input")}
    assert names == {"CrossEntropyLoss", "MSELoss"}
    assert len(run.scalar("loop/clipped")) == 10
