"""Gradient norms before and after clip_grad_norm_, tied weights counted once (issue 8 / issue 9)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils.clip_grad as clip_mod
from torch import nn

import trainscope


class TinyGPT(nn.Module):
    """GPT-2's layout in miniature: the output layer's weight *is* the token embedding."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(8, d)
        self.block = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        h = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        return self.lm_head(self.ln_f(h + self.block(h)))


def test_tied_weights_pre_and_post_clip_norms(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 50, (4, 8))
    returned, after, layer_pre = [], [], []
    orig = clip_mod._clip_grads_with_norm_
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=2):
        assert clip_mod._clip_grads_with_norm_ is not orig  # seen while the probe is live
        for _ in range(4):
            opt.zero_grad()
            logits = model(idx)
            nn.functional.cross_entropy(logits.reshape(-1, 50), idx.reshape(-1)).mul(30).backward()
            layer_pre.append(torch.cat([model.ln_f.weight.grad, model.ln_f.bias.grad]).norm().item())
            returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
            after.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
            opt.step()
    assert clip_mod._clip_grads_with_norm_ is orig  # restored at close
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("grad_norm").tolist() == pytest.approx(returned, rel=1e-5)  # pre-clip, tied weight once
    assert min(returned) > 1.0
    assert run.scalar("grad_norm_clipped").tolist() == pytest.approx(after, rel=1e-4)
    assert run.scalar("grad_norm_clipped").tolist() == pytest.approx([1.0] * 4, rel=1e-4)
    assert run.scalar("clip/max_norm").tolist() == [1.0] * 4
    assert run.scalar("loop/clipped").tolist() == [1.0] * 4
    g = run.layers[(run.layers.kind == "grad") & (run.layers.layer == "ln_f")].set_index("step")["norm"]
    assert g.loc[[0, 1, 2]].tolist() == pytest.approx([layer_pre[i] for i in (0, 1, 2)], rel=1e-5)  # pre-clip


def test_inactive_clip_and_no_optimizer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    returned = []
    with trainscope.watch(model, tmp_path / "r"):
        for _ in range(3):
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            from torch.nn.utils import clip_grad_norm_  # imported inside the loop: still seen

            returned.append(clip_grad_norm_(model.parameters(), max_norm=100.0).item())
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("grad_norm").tolist() == pytest.approx(returned, rel=1e-5)
    assert run.scalar("loop/clipped").tolist() == [0.0] * 3
    assert run.scalar("clip/max_norm").tolist() == [100.0] * 3
    assert run.scalar("grad_norm_clipped").tolist() == pytest.approx(returned, rel=1e-5)


def test_gradscaler_unscale_then_clip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    returned = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt):
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05).item())
            scaler.step(opt)
            scaler.update()
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalar("grad_norm").tolist() == pytest.approx(returned, rel=1e-5)  # unscaled, before the clip
    assert run.scalar("grad_norm_clipped").tolist() == pytest.approx([0.05] * 3, rel=1e-3)
