"""Framework callbacks on real (tiny, CPU) training: Hugging Face Trainer on a 2-layer GPT-2 built from a
config (no download) and Lightning on sklearn's digits."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import trainscope
from trainscope.rules.finding import Severity

torch.set_num_threads(1)

WARN = Severity.WARNING.rank


def _serious(run) -> dict[str, str]:
    return {f.name: f.message for f in trainscope.diagnose(run) if f.severity.rank >= WARN}


# ----------------------------------------------------------------------------- Hugging Face Trainer
class _Sequences(torch.utils.data.Dataset):
    """Arithmetic token sequences (start + stride * i mod 64): learnable next-token prediction."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, 64, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.x = (start + stride * torch.arange(16)) % 64

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _hf_train(tmp_path, lr: float, epochs: int, callback_args: dict | None = None, trainer_cls=None, **args):
    transformers = pytest.importorskip("transformers", reason="the Hugging Face callback needs transformers")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from trainscope.integrations.transformers import TrainscopeCallback

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    targs = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                              num_train_epochs=epochs, learning_rate=lr, logging_steps=4, eval_strategy="epoch",
                              save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                              dataloader_num_workers=0, **args)
    cb = TrainscopeCallback(every=5, **(callback_args or {}))
    trainer = (trainer_cls or Trainer)(model=model, args=targs, train_dataset=_Sequences(128, 0), eval_dataset=_Sequences(32, 1),
                      callbacks=[cb])
    trainer.train()
    return trainer, cb


def test_hf_trainer_healthy_run(tmp_path):
    trainer, cb = _hf_train(tmp_path, lr=5e-3, epochs=4)
    run_dir = tmp_path / "out" / "trainscope"  # default: inside the Trainer's output_dir
    run = trainscope.load_run(run_dir)
    assert run.status == "finished" and run.meta["steps"] == 64 == trainer.state.global_step
    loss = run.scalar("train_loss")
    assert loss.index.tolist() == list(range(64))  # one loss per optimizer step, from outputs.loss
    assert abs(loss.iloc[0] - 4.16) < 0.5  # ~ln(64) at the start
    hf_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h][:3]
    for i, logged in enumerate(hf_logged):  # HF's logged loss is the mean over its logging_steps window
        assert loss.iloc[4 * i:4 * i + 4].mean() == pytest.approx(logged, rel=1e-4)
    assert run.meta["config"]["logged_mean_over"] == {}  # nothing windowed was recorded
    assert run.meta["optimizer"]["class"] == "AdamW"  # the real optimizer, not AcceleratedOptimizer
    assert run.meta["scheduler"]["class"] == "LambdaLR"
    assert len(run.scalar("val_loss")) == 4 and run.events_of("epoch")["value"].tolist() == [0, 1, 2, 3]
    grads = run.layers[run.layers.kind == "grad"]
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "transformer.wte"} <= set(grads.layer)
    assert run.scalar("lr/0").iloc[0] == pytest.approx(5e-3)
    assert trainscope.load_run(tmp_path / "out").path == run_dir  # diagnose OUTPUT_DIR finds it
    assert not _serious(run), _serious(run)


def test_hf_trainer_lr_too_high(tmp_path):
    _hf_train(tmp_path, lr=1.0, epochs=2)
    run = trainscope.load_run(tmp_path / "out" / "trainscope")
    loss = run.scalar("train_loss")
    assert len(loss) == 32 and loss.iloc[5:].min() > 2 * loss.iloc[0]  # it really did blow up
    found = _serious(run)
    assert {"lr-too-high", "divergence"} & set(found), found


def test_hf_trainer_custom_compute_loss_falls_back_to_the_logged_mean(tmp_path):
    """A Trainer whose compute_loss does not come from outputs.loss: the windowed mean, said so in meta."""
    pytest.importorskip("transformers", reason="the Hugging Face callback needs transformers")
    from transformers import Trainer

    class MyTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1))
            return (loss, {"logits": logits}) if return_outputs else loss

    _hf_train(tmp_path, lr=5e-3, epochs=1, trainer_cls=MyTrainer)
    run = trainscope.load_run(tmp_path / "out" / "trainscope")
    assert run.meta["config"]["logged_mean_over"] == {"train_loss": 4}
    assert len(run.scalar("train_loss")) == 4  # 16 steps, logged every 4


def test_hf_callback_never_raises_into_the_trainer(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="the Hugging Face callback needs transformers")
    from trainscope.integrations.transformers import TrainscopeCallback

    def broken(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(TrainscopeCallback, "_last_step", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, cb = _hf_train(tmp_path, lr=5e-3, epochs=1)
    assert trainer.state.global_step == 16  # training finished
    msgs = [str(w.message) for w in caught if "trainscope" in str(w.message)]
    assert len(msgs) == 1 and "boom" in msgs[0]
    run = trainscope.load_run(tmp_path / "out" / "trainscope")  # what was recorded is kept
    assert run.status == "incomplete" and len(run.scalar("train_loss")) >= 1


# ----------------------------------------------------------------------------- Lightning
def _digits():
    sk = pytest.importorskip("sklearn.datasets", reason="the Lightning test trains on sklearn's digits")
    x, y = sk.load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (torch.utils.data.TensorDataset(x[:1400], y[:1400]), torch.utils.data.TensorDataset(x[1400:], y[1400:]))


def _pl_fit(run_dir, softmax: bool = False, submodule: bool = False, epochs: int = 8, **callback_args):
    pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs lightning")
    from trainscope.integrations.lightning import TrainscopeCallback

    class Digits(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)]
            if softmax:
                layers.append(nn.Softmax(dim=1))
            self.net = nn.Sequential(*layers)
            self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x) if submodule else self(x)
            loss = self.loss_fn(out, y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self(x)
            self.log("val_loss", self.loss_fn(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    train, val = _digits()
    torch.manual_seed(0)
    cb = TrainscopeCallback(run_dir, every=10, **callback_args)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         num_sanity_val_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Digits(), torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
                    torch.utils.data.DataLoader(val, batch_size=256))
    return trainer


def test_lightning_healthy_run(tmp_path):
    trainer = _pl_fit(tmp_path / "run")
    run = trainscope.load_run(tmp_path / "run")
    assert run.status == "finished" and run.meta["steps"] == trainer.global_step == 176
    assert run.scalar("train_loss").index.tolist() == list(range(176))
    val = run.scalar("val_loss")
    assert len(val) == 8  # the sanity-check validation is not a data point
    assert val.iloc[-1] < 0.5 * val.iloc[0]
    assert len(run.scalar("val_acc")) == 8
    assert run.events_of("epoch")["value"].tolist() == list(range(8))
    assert run.meta["optimizer"]["class"] == "Adam" and run.meta["criterion"]["class"] == "CrossEntropyLoss"
    assert {"net.0", "net.2"} <= set(run.layers[run.layers.kind == "grad"].layer)
    # Lightning steps with optimizer.step(closure): the gradients are the closure's, from step 0 on
    assert run.scalar("grad_norm").index[0] == 0 and (run.scalar("loop/backwards") == 1).all()
    assert not _serious(run), _serious(run)


def test_lightning_softmax_before_cross_entropy(tmp_path):
    _pl_fit(tmp_path / "run", softmax=True)
    found = {f.name: f for f in trainscope.diagnose(tmp_path / "run")}
    assert "softmax-before-cross-entropy" in found
    assert found["softmax-before-cross-entropy"].severity.rank >= WARN


def test_lightning_training_step_calling_a_submodule_is_still_recorded(tmp_path):
    trainer = _pl_fit(tmp_path / "run", submodule=True, epochs=2)
    run = trainscope.load_run(tmp_path / "run")
    loss = run.scalar("train_loss")
    assert loss.index.tolist() == list(range(trainer.global_step))  # not all on step 0
    assert not run.layers[run.layers.kind == "grad"].empty
    assert len(run.scalar("val_loss")) == 2


def test_lightning_callback_is_a_callback_of_the_installed_package():
    pl = pytest.importorskip("lightning.pytorch", reason="the Lightning callback needs lightning")
    from trainscope.integrations.lightning import TrainscopeCallback

    assert isinstance(TrainscopeCallback(), pl.Callback)
    try:
        import pytorch_lightning
    except ImportError:
        return
    from trainscope.integrations.pytorch_lightning import TrainscopeCallback as PLCallback

    assert isinstance(PLCallback(), pytorch_lightning.Callback)


def test_core_import_needs_no_framework():
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None; sys.modules['lightning'] = None; "
            "sys.modules['pytorch_lightning'] = None; import trainscope, trainscope.integrations; "
            "import trainscope.probe, trainscope.rules.engine, trainscope.cli; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_lightning_on_finding_raise_stops_the_fit(tmp_path):
    with pytest.raises(trainscope.TrainscopeFinding) as info:
        _pl_fit(tmp_path / "run", softmax=True, on_finding="raise")
    assert info.value.code == "TS601" and info.value.step <= 2
    run = trainscope.load_run(tmp_path / "run")
    assert run.status == "stopped" and run.meta["steps"] <= 3
