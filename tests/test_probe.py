"""The probe records the right numbers (checked against plain numpy on the same tensors) and never
changes the training it watches."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.probe import stats as st


def _mlp(seed: int = 0, dropout: float = 0.0, bn: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(12, 32)]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4)]
    return nn.Sequential(*layers)


def _data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def _np_stats(a: np.ndarray) -> dict[str, float]:
    a = a.astype(np.float64).ravel()
    return {"norm": np.linalg.norm(a), "mean": a.mean(), "std": a.std(ddof=1), "max_abs": np.abs(a).max(),
            "frac_zero": float((a == 0).mean()), "nonfinite": float((~np.isfinite(a)).sum()), "numel": a.size}


def test_recorded_statistics_match_numpy(tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    x, y = _data()
    expected = []  # per step: numbers computed independently from the same tensors
    with trainscope.watch(model, tmp_path / "run", optimizer=opt, criterion=crit, every=1) as probe:
        for step in range(3):
            opt.zero_grad()
            w0 = model[0].weight.detach().numpy().copy()
            b0 = model[0].bias.detach().numpy().copy()
            loss = crit(model(x), y)
            loss.backward()
            grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
            before = np.concatenate([w0.ravel(), b0.ravel()])
            opt.step()
            after = np.concatenate([model[0].weight.detach().numpy().ravel(), model[0].bias.detach().numpy().ravel()])
            pre = x.numpy() @ w0.T + b0
            relu = np.maximum(pre, 0)
            expected.append({
                "grad0": _np_stats(np.concatenate([grads["0.weight"].ravel(), grads["0.bias"].ravel()])),
                "weight0": _np_stats(before),
                "relu": {**_np_stats(relu), "frac_dead": float((relu <= 0).all(axis=0).mean())},
                "tanh_sat": None,
                "update_ratio": np.linalg.norm(after - before) / np.linalg.norm(before),
                "grad_norm": math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())),
                "loss": float(loss),
            })
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "run")
    L = run.layers
    for step, exp in enumerate(expected):
        at = L[L.step == step]
        g = at[(at.layer == "0") & (at.kind == "grad")].iloc[0]
        w = at[(at.layer == "0") & (at.kind == "weight")].iloc[0]
        a = at[(at.layer == "1") & (at.kind == "activation")].iloc[0]
        u = at[(at.layer == "0") & (at.kind == "update")].iloc[0]
        for key, val in exp["grad0"].items():
            assert g[key] == pytest.approx(val, rel=1e-4, abs=1e-7), ("grad", key, step)
        for key, val in exp["weight0"].items():
            assert w[key] == pytest.approx(val, rel=1e-4, abs=1e-7), ("weight", key, step)
        for key, val in exp["relu"].items():
            assert a[key] == pytest.approx(val, rel=1e-4, abs=1e-6), ("activation", key, step)
        assert u["ratio"] == pytest.approx(exp["update_ratio"], rel=1e-3)
        assert run.scalar("grad_norm")[step] == pytest.approx(exp["grad_norm"], rel=1e-4)
        assert run.scalar("train_loss")[step] == pytest.approx(exp["loss"], rel=1e-6)
        assert run.scalar("lr/0")[step] == pytest.approx(0.1)
        assert run.scalar("momentum/0")[step] == pytest.approx(0.9)
    # the order column is the forward order: Linear 0, ReLU 1, Dropout 2, Linear 3, Tanh 4, Linear 5
    order = L.drop_duplicates("layer").set_index("layer")["order"].to_dict()
    assert order["0"] < order["1"] < order["3"] < order["4"] < order["5"]
    # tanh saturation matches its definition on the real output
    h = torch.tanh(model[3](torch.relu(model[0](x)))).detach()
    assert 0.0 <= L[(L.layer == "4") & (L.kind == "activation")]["frac_saturated"].iloc[-1] <= 1.0
    assert st.activation_stats(h, "Tanh")[8].item() == pytest.approx(float((h.abs() > 0.99).float().mean()))


def _train(model: nn.Module, steps: int, run_dir=None, every: int = 1, **kw) -> list[torch.Tensor]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    crit = nn.CrossEntropyLoss()
    x, y = _data(96)
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=crit, every=every, **kw) if run_dir else None
    for step in range(steps):
        for i in range(0, 96, 32):
            opt.zero_grad()
            loss = crit(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
            if probe:
                probe.log(train_loss=loss)
    if probe:
        probe.close()
    return [p.detach().clone() for p in model.parameters()]


def test_parameters_bitwise_identical_with_and_without_watch(tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(123)
        plain = _train(_mlp(seed=5, dropout=0.3, bn=True), 6)
        torch.manual_seed(123)
        watched = _train(_mlp(seed=5, dropout=0.3, bn=True), 6, run_dir=tmp_path / "r", every=1)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    assert trainscope.load_run(tmp_path / "r").layers.step.nunique() == 18


def test_failing_hook_disables_itself_and_training_goes_on(tmp_path, monkeypatch):
    torch.manual_seed(7)
    plain = _train(_mlp(seed=3), 3)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(st, "raw_activation", broken)
    torch.manual_seed(7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watched = _train(_mlp(seed=3), 3, run_dir=tmp_path / "r")
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    msgs = [str(w.message) for w in caught if "trainscope" in str(w.message)]
    assert len(msgs) == 1 and "activation" in msgs[0]
    run = trainscope.load_run(tmp_path / "r")
    assert run.events_of("hook_error")["detail"].str.contains("boom").any()
    assert run.layers[run.layers.kind == "activation"].empty
    assert not run.layers[run.layers.kind == "grad"].empty  # the other hooks kept working


def test_init_table_on_streamrec_mlp(tmp_path):
    torch.manual_seed(0)
    dims = [128, 512, 256, 128, 64]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(32, 128)
    with trainscope.watch(model, tmp_path / "default", optimizer=opt):
        model(x).sum().backward()
        opt.step()
    init = trainscope.load_run(tmp_path / "default").init.set_index("layer")
    hidden = init.loc[["0", "2", "4", "6"]]
    assert (hidden["nonlinearity"] == "relu").all() and (hidden["target_scheme"] == "he").all()
    assert hidden["ratio"].between(0.14, 0.20).all(), hidden["ratio"]  # 1/6, not the seed's 0.50
    assert (hidden["scheme"] == "torch_default").all()
    assert init.loc["8", "nonlinearity"] == "linear" and init.loc["8", "target_scheme"] == "xavier"
    # independent check of one row
    w = model[0].weight  # after one step, so compare against the recorded fan_in only
    assert init.loc["0", "fan_in"] == 128 and init.loc["0", "fan_out"] == 512 and w.shape == (512, 128)

    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    expected_var = model[2].weight.detach().double().var().item()
    opt = torch.optim.Adam(model.parameters())
    with trainscope.watch(model, tmp_path / "he", optimizer=opt):
        model(x).sum().backward()
        opt.step()
    init = trainscope.load_run(tmp_path / "he").init.set_index("layer")
    assert init.loc[["0", "2", "4", "6"], "ratio"].between(0.9, 1.1).all()
    assert init.loc["2", "var"] == pytest.approx(expected_var, rel=1e-4)
    assert init.loc["2", "scheme"] == "he_normal"


def test_functional_activations_are_seen(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.fc2(torch.nn.functional.relu(self.fc1(x)))))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
    init = trainscope.load_run(tmp_path / "r").init.set_index("layer")
    assert init.loc["fc1", "nonlinearity"] == "relu"
    assert init.loc["fc2", "nonlinearity"] == "tanh"
    assert init.loc["out", "nonlinearity"] == "linear"


def test_loop_facts(tmp_path):
    """eval() while training, missing zero_grad, accumulation and softmax into CrossEntropyLoss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    crit = nn.CrossEntropyLoss()
    x, y = _data()
    with trainscope.watch(model, tmp_path / "buggy", optimizer=opt, criterion=crit) as probe:
        model.eval()
        for _ in range(4):
            loss = crit(model(x), y)  # no zero_grad
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "buggy")
    assert (run.scalar("loop/training") == 0).all()
    assert (run.scalar("loop/grad_reset") == 0).all() and len(run.scalar("loop/grad_reset")) == 3
    assert (run.scalar("loop/backwards") == 1).all()
    ci = run.events_of("criterion_input").iloc[0]
    import json

    detail = json.loads(ci["detail"])
    assert detail["producer"] == "SoftmaxBackward0" and detail["is_prob"] and detail["num_classes"] == 4
    assert detail["loss"] == pytest.approx(run.scalar("train_loss")[0], rel=1e-6)
    assert run.meta["criterion"]["class"] == "CrossEntropyLoss" and run.meta["num_classes"] == 4

    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with trainscope.watch(model, tmp_path / "accum", optimizer=opt, criterion=crit):
        model.train()
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            for i in range(2):  # two micro-batches per step: accumulation, not a bug
                crit(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32]).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "accum")
    assert (run.scalar("loop/backwards") == 2).all()
    assert (run.scalar("loop/grad_reset") == 1).all()
    assert (run.scalar("loop/training") == 1).all()


def test_scheduler_and_optimizer_facts(tmp_path):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100)
    crit = nn.CrossEntropyLoss()
    x, y = _data()
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, scheduler=sched) as probe:
        for epoch in range(3):
            for i in range(0, 64, 16):
                opt.zero_grad()
                crit(model(x[i:i + 16]), y[i:i + 16]).backward()
                opt.step()
            sched.step()  # per epoch: the wrong cadence for OneCycleLR
            probe.log(epoch=epoch, val_loss=0.5)
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["optimizer"]["class"] == "Adam"
    assert run.meta["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    assert run.meta["scheduler"]["class"] == "OneCycleLR" and run.meta["scheduler"]["params"]["total_steps"] == 100
    steps = run.scalar("loop/scheduler_steps")
    assert steps.iloc[0] == 0 and steps.iloc[-1] == 2 and len(steps) == 12
    lr = run.scalar("lr/0")
    assert lr.iloc[0] == pytest.approx(sched.get_last_lr()[0] * 0 + lr.iloc[0])  # recorded each step
    assert run.events_of("epoch")["value"].tolist() == [0.0, 1.0, 2.0]


def test_batchnorm_batch_and_input_scale(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = _data()
    x = x * 300 + 1000  # raw, unnormalized features
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1):
        for bs in (16, 4, 2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:bs]), y[:bs]).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    bn = run.events_of("batchnorm_batch")
    assert bn["value"].min() == 2 and set(bn["layer"]) == {"1"}
    import json

    scale = json.loads(run.events_of("input_scale").iloc[0]["detail"])
    assert scale["mean"] == pytest.approx(float(x[:16].mean()), rel=1e-4)
    assert scale["feature_std_max"] == pytest.approx(float(x[:16].std(dim=0).max()), rel=1e-4)
    assert run.scalar("loop/batch_size").tolist() == [16, 4, 2]


def test_first_nonfinite_step_and_layer(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    crit = nn.CrossEntropyLoss()
    x, y = _data()
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, every=50, grad_norm_every=1) as probe:
        for step in range(8):
            opt.zero_grad()
            xb = x.clone()
            if step == 5:
                xb[0, 0] = float("nan")
            loss = crit(model(xb), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    ev = run.events_of("nonfinite")
    assert 5 == ev[ev.detail.str.contains('"loss"')]["step"].min()
    grad_ev = ev[ev.detail.str.contains('"tensor": "grad"')]
    assert grad_ev["step"].min() == 5
    assert (grad_ev["layer"] == "0").any()  # step 5 is not a sampled step: recorded because it went bad


def test_without_optimizer_steps_are_backward_passes(tmp_path):
    model = _mlp()
    x, y = _data()
    with trainscope.watch(model, tmp_path / "r", every=1) as probe:
        for _ in range(4):
            model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["steps"] == 4
    assert sorted(run.scalar("train_loss").index) == [0, 1, 2, 3]
    assert sorted(run.layers[run.layers.kind == "grad"].step.unique()) == [0, 1, 2, 3]


def test_bf16_autocast_and_gradscaler(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    crit = nn.CrossEntropyLoss()
    x, y = _data()
    unscaled = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, every=1):
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            unscaled.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
            scaler.step(opt)
            scaler.update()
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("grad_norm").tolist() == pytest.approx(unscaled, rel=1e-4)  # after unscaling
    acts = run.layers[run.layers.kind == "activation"]
    assert not acts.empty and np.isfinite(acts["std"]).all()


def test_compiled_model_is_not_broken(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = _data()
    with trainscope.watch(compiled, tmp_path / "r", optimizer=opt, every=1) as probe:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["compiled"] is True and run.meta["steps"] == 3
    assert len(run.scalar("train_loss")) == 3
    assert not run.layers[run.layers.kind == "grad"].empty


def test_every_layer_kind_with_parameters_is_recorded(tmp_path):
    """Embedding, LSTM, attention (in_proj_weight lives on MultiheadAttention itself), LayerNorm, Linear."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(30, 16)
            self.lstm = nn.LSTM(16, 16, batch_first=True)
            self.attn = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h, _ = self.lstm(self.emb(x))
            return self.head(self.attn(h).mean(dim=1))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randint(0, 30, (8, 5)), torch.randint(0, 3, (8,))
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=nn.CrossEntropyLoss()):
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    grads = run.layers[run.layers.kind == "grad"]
    expected = {"emb", "lstm", "attn.self_attn", "attn.self_attn.out_proj", "attn.linear1", "attn.norm1", "head"}
    assert expected <= set(grads.layer)
    lstm = grads[(grads.layer == "lstm") & (grads.step == 0)].iloc[0]
    want = torch.cat([p.grad.flatten() for p in model.lstm.parameters()])  # grads of the last step are
    assert lstm["numel"] == want.numel()  # still there: same tensors, so at least the size must agree
    acts = run.layers[run.layers.kind == "activation"]
    assert {"emb", "lstm", "head"} <= set(acts.layer)
    assert run.events_of("input_scale").empty  # integer token ids: no feature scale to speak of
