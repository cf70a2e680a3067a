"""The training toolkit against PyTorch's own reference behaviour: inits, optimizer groups,
schedules, clipping, accumulation, mixed precision, presets/config errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import TensorDataset

from trainscope.errors import TrainscopeError
from trainscope.train import init as tinit
from trainscope.train.loop import TrainConfig, Trainer
from trainscope.train.models import build_mlp, streamrec_mlp
from trainscope.train.optim import make_optimizer, param_groups
from trainscope.train.presets import PRESETS, build, load_config, resolve
from trainscope.train.schedules import ScheduleSpec, make_scheduler, trace, warmup_cosine


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models on a shared 2-core machine: one thread is faster and steadier
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- initialization ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["he_normal", "he_uniform"])
def test_he_init_gives_two_over_fan_in(scheme):
    torch.manual_seed(0)
    layer = nn.Linear(512, 1024)
    tinit.init_layer(layer.weight, scheme, "relu")
    assert layer.weight.var().item() == pytest.approx(2 / 512, rel=0.03)


def test_he_fan_out_mode_uses_fan_out():
    torch.manual_seed(0)
    layer = nn.Linear(1024, 256)
    tinit.init_layer(layer.weight, "he_normal", "relu", mode="fan_out")
    assert layer.weight.var().item() == pytest.approx(2 / 256, rel=0.03)


@pytest.mark.parametrize("scheme, nl, expected", [
    ("xavier_normal", "tanh", (5 / 3) ** 2 * 2 / (512 + 256)),
    ("xavier_uniform", "sigmoid", 2 / (512 + 256)),
    ("lecun_normal", "selu", 1 / 512),
    ("lecun_uniform", "linear", 1 / 512),
])
def test_other_schemes_hit_their_target(scheme, nl, expected):
    torch.manual_seed(0)
    layer = nn.Linear(512, 256)
    tinit.init_layer(layer.weight, scheme, nl)
    assert layer.weight.var().item() == pytest.approx(expected, rel=0.04)
    assert tinit.target_variance(scheme, 512, 256, nl) == pytest.approx(expected)


def test_orthogonal_init_is_orthogonal():
    layer = nn.Linear(64, 64)
    tinit.init_layer(layer.weight, "orthogonal", "linear")
    w = layer.weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)


def test_torch_default_is_a_sixth_of_he_not_a_half():
    """The erratum: kaiming_uniform_(a=sqrt(5)) gives 1/(3 fan_in), ratio 1/6 against He."""
    torch.manual_seed(0)
    model = streamrec_mlp("baseline")
    ratios = [m.weight.var().item() / (2 / m.in_features) for m in model if isinstance(m, nn.Linear)]
    assert all(r == pytest.approx(1 / 6, rel=0.1) for r in ratios[:-1])


def test_auto_init_follows_the_next_nonlinearity():
    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    follows = tinit.following_nonlinearity(model)
    assert follows == {"0": "relu", "4": "tanh", "6": "linear"}
    nn.init.constant_(model[0].bias, 3.0)
    applied = tinit.init_weights(model, "auto")
    assert applied == {"0": "he_normal", "4": "xavier_normal", "6": "lecun_normal"}
    assert torch.count_nonzero(model[0].bias) == 0  # zero-bias
    assert torch.equal(model[1].weight, torch.ones(64))


def test_unknown_init_scheme_is_a_clear_error():
    with pytest.raises(TrainscopeError, match="unknown init scheme"):
        tinit.init_weights(nn.Linear(2, 2), "kaiming")


# -- models -----------------------------------------------------------------------------------------
def test_mlp_block_order_and_output():
    model = build_mlp(8, [16, 16], 3, norm="layer", dropout=[0.2, 0.0], activation="gelu")
    types = [type(m).__name__ for m in model]
    assert types == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU", "Linear"]
    assert model(torch.randn(5, 8)).shape == (5, 3)
    gn = build_mlp(8, [12], 2, norm="group", groups=8)
    assert isinstance(gn[1], nn.GroupNorm) and 12 % gn[1].num_groups == 0


def test_buggy_and_fixed_document_classifier_shapes():
    from trainscope.train.models import DocumentClassifier

    buggy = DocumentClassifier(100, 5, hidden=(32, 16), buggy=True)
    out = buggy(torch.randn(4, 100))
    assert torch.allclose(out.sum(1), torch.ones(4))  # the softmax bug
    fixed = DocumentClassifier(100, 5, hidden=(32, 16))
    assert not any(isinstance(m, (nn.Softmax, nn.Sigmoid)) for m in fixed.modules())


# -- optimizers -------------------------------------------------------------------------------------
def test_adamw_groups_exclude_biases_and_norm_weights():
    model = streamrec_mlp("full", hidden=(32, 16))
    opt = make_optimizer(model, "adamw", lr=1e-3, weight_decay=1e-2)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-2 and no_decay["weight_decay"] == 0.0
    linear_weights = {id(m.weight) for m in model if isinstance(m, nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear_weights
    norm_params = {id(p) for m in model if isinstance(m, nn.BatchNorm1d) for p in m.parameters()}
    biases = {id(m.bias) for m in model if isinstance(m, nn.Linear)}
    assert {id(p) for p in no_decay["params"]} == norm_params | biases
    assert isinstance(opt, torch.optim.AdamW)
    n_total = sum(1 for _ in model.parameters())
    assert len(param_groups(model, 0.1)[0]["params"]) + len(param_groups(model, 0.1)[1]["params"]) == n_total


def test_sgd_nesterov_and_adam_l2():
    model = nn.Linear(4, 2)
    sgd = make_optimizer(model, "sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adam = make_optimizer(model, "adam", lr=1e-3, weight_decay=1e-4)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 1e-4
    with pytest.raises(TrainscopeError, match="Nesterov"):
        make_optimizer(model, "sgd", lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(TrainscopeError, match="unknown optimizer"):
        make_optimizer(model, "lamb")


# -- schedules --------------------------------------------------------------------------------------
def _reference_lrs(make, steps, lr=0.1, momentum=False):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    sched = make(opt)
    out = []
    for _ in range(steps):
        g = opt.param_groups[0]
        out.append(g["momentum"] if momentum else g["lr"])
        opt.step()
        sched.step()
    return out


def test_onecycle_equals_torch_onecycle_lr_with_momentum_cycling():
    spec = ScheduleSpec("onecycle", max_lr=0.1, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    got = trace(spec, total_steps=200, steps_per_epoch=20)
    ref = lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=200, pct_start=0.3, div_factor=25,
                                            final_div_factor=1e4)
    assert got["lr"] == _reference_lrs(ref, 200)
    assert got["momentum"] == _reference_lrs(ref, 200, momentum=True)
    assert min(got["momentum"]) == pytest.approx(0.85, abs=1e-3) and got["momentum"][0] == pytest.approx(0.95)
    assert got["lr"][0] == pytest.approx(0.1 / 25)
    assert max(got["lr"]) == pytest.approx(0.1, rel=1e-3)


def test_warmup_cosine_shape():
    got = trace(ScheduleSpec("warmup_cosine", warmup_frac=0.1, warmup_start=1e-3), 500, 50, lr=0.2)["lr"]
    expected = [warmup_cosine(s, 500, 50, 0.2, 1e-3) for s in range(500)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    peak = got.index(max(got))
    assert peak == 50
    assert all(a < b for a, b in zip(got[:50], got[1:51]))  # rising linearly
    assert all(a >= b for a, b in zip(got[50:], got[51:]))  # then falling
    assert got[-1] < 0.01 * 0.2


def test_step_cosine_and_restarts_equal_torch():
    t = trace(ScheduleSpec("step", step_epochs=3, gamma=0.5), 100, 10)["lr"]
    assert t == _reference_lrs(lambda o: lr_scheduler.StepLR(o, step_size=30, gamma=0.5), 100)
    t = trace("cosine", 100, 10)["lr"]
    assert t == _reference_lrs(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=100), 100)
    t = trace(ScheduleSpec("cosine_restarts", restart_epochs=2, t_mult=2), 140, 10)["lr"]
    assert t == _reference_lrs(lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2), 140)
    assert t[20] == pytest.approx(0.1) and t[60] == pytest.approx(0.1)  # the restarts


def test_unknown_schedule_is_a_clear_error():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TrainscopeError, match="unknown schedule"):
        make_scheduler(opt, "linear", 10, 1)


# -- loop mechanics ---------------------------------------------------------------------------------
def _regression_data(n=300, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh() + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))


def test_accumulation_over_k_micro_batches_equals_the_large_batch():
    data = _regression_data(300)  # 300 = 2 x 128 + 44: the last group is uneven
    results = []
    for batch, k in ((128, 1), (32, 4)):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        cfg = TrainConfig(epochs=2, batch_size=batch, accumulation_steps=k, shuffle=False, validate=False)
        tr = Trainer(model, opt, nn.MSELoss(), data, config=cfg)
        tr.fit()
        assert tr.global_step == 6  # 3 optimizer steps per epoch either way
        results.append(model.state_dict())
    for key in results[0]:
        assert torch.allclose(results[0][key], results[1][key], atol=1e-6), key


def test_clipping_by_norm_equals_clip_grad_norm():
    data = _regression_data(64)
    x, y = data.tensors
    ref = _model()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    loss = nn.MSELoss()(ref(x), y)
    loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    opt_ref.step()

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tr = Trainer(model, opt, nn.MSELoss(), data, config=TrainConfig(epochs=1, batch_size=64, clip_norm=0.05,
                                                                     shuffle=False, validate=False))
    _, norm = tr.train_step([(x, y)])
    assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-6) and norm.item() > 0.05
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_clipping_by_value_bounds_every_gradient():
    data = _regression_data(64)
    model = _model()
    seen = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_pre_hook(lambda o, a, k: seen.append(max(p.grad.abs().max().item() for p in model.parameters())))
    Trainer(model, opt, nn.MSELoss(), data, config=TrainConfig(epochs=1, batch_size=16, clip_value=1e-3,
                                                                validate=False)).fit()
    assert seen and max(seen) <= 1e-3 + 1e-9


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(precision):
    data = _regression_data(256)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tr = Trainer(model, opt, nn.MSELoss(), data, data,
                 config=TrainConfig(epochs=3, batch_size=32, precision=precision, clip_norm=1.0))
    h = tr.fit()
    assert (tr.scaler is not None) == (precision == "fp16")
    assert all(math.isfinite(r.train_loss) for r in h.epochs)
    assert h.epochs[-1].val_loss < h.epochs[0].train_loss
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_bf16_autocast_really_computes_in_bf16():
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), _regression_data(8),
                 config=TrainConfig(precision="bf16"))
    with tr.autocast():
        out = model(torch.randn(4, 6))
    assert out.dtype == torch.bfloat16


def test_bad_trainer_config_is_a_clear_error():
    with pytest.raises(TrainscopeError, match="precision"):
        TrainConfig(precision="fp8").validate_fields()
    with pytest.raises(TrainscopeError, match="early stopping needs validation"):
        TrainConfig(early_stopping=True, validate=False).validate_fields()


# -- presets and configs ----------------------------------------------------------------------------
def test_every_preset_builds_at_tiny_scale():
    for name in PRESETS:
        exp = build(name, scale=0.1)
        x, _ = exp.splits.train[0:4]
        assert exp.model(x).shape[0] == 4, name


def test_preset_progression_changes_one_thing_at_a_time():
    he, bn = PRESETS["streamrec-he"], PRESETS["streamrec-bn"]
    assert PRESETS["streamrec-baseline"]["model"]["init"] == "torch_default" and he["model"]["init"] == "he_normal"
    assert bn["model"]["norm"] == "batch" and he["model"]["norm"] == "none"
    assert PRESETS["streamrec-full"]["schedule"]["name"] == "onecycle"
    assert PRESETS["streamrec-full"]["train"]["early_stopping"] is True


def test_toml_config_overrides_a_preset(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('preset = "streamrec-full"\nscale = 0.1\n[train]\nepochs = 2\n[optim]\nlr = 0.002\n')
    resolved = load_config(cfg)
    exp = build(resolved)
    assert exp.train_config.epochs == 2 and exp.optimizer.param_groups[0]["lr"] == 0.002
    assert exp.config["model"]["norm"] == "batch"  # from the preset
    assert exp.splits.train.tensors[0].shape[0] == 1200  # 12000 x 0.1


@pytest.mark.parametrize("text, message", [
    ('preset = "nope"', "unknown preset"),
    ('preset = "digits"\n[train]\nepochz = 3', "unknown key"),
    ('[data]\nkind = "imagenet"\n[model]\n[optim]\n[schedule]\n[train]', "kind must be one of"),
    ("this is = not toml [", "not valid TOML"),
    ('preset = "digits"\n[train]\nepochs = "ten"', "bad value"),
    ('preset = "digits"\n[model]\nactivation = "swish"', "unknown activation"),
    ('colour = 1', "unknown key"),
])
def test_bad_config_files_are_clear_errors(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(TrainscopeError, match=message):
        build(load_config(cfg))


def test_resolve_needs_all_tables():
    with pytest.raises(TrainscopeError, match="missing"):
        resolve({"data": {"kind": "digits"}})
    with pytest.raises(TrainscopeError, match="scale"):
        build("digits", scale=0)
