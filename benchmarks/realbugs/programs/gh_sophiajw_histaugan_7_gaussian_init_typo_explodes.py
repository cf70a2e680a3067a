"""sophiajw/HistAuGAN#7: training showed an exploding loss; the author: "I also encountered this before and it was
an exploding gradient problem. In a previous commit, another user corrected a typo in the gaussian weight init
(0.02 instead of 0.2), which led to the same mistake." HistAuGAN builds on DRIT/MDMM, whose
gaussian_weights_init draws every Conv weight from N(0, 0.02); with the typo it is N(0, 0.2), ten times
larger, in networks whose discriminator has no normalization layers. Tiny scale, one component only: the
multi-domain discriminator (a stack of stride-2 LeakyReLU convolutions without normalization, with a head
that classifies the staining domain of a tile) trained to tell 5 synthetic "staining domains" apart on 16x16
RGB tiles; Adam(lr=1e-4, betas=(0.5, 0.999)) as in DRIT. The generator/adversarial part is not ported."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_sophiajw_histaugan_7_gaussian_init_typo_explodes",
    "source": "https://github.com/sophiajw/HistAuGAN/issues/7 — Potential Exploding Gradients Problem?",
    "summary": "conv discriminator without normalization initialized from N(0, 0.2) instead of N(0, 0.02) (a typo): "
               "activations grow ~3x per layer, the initial logits and loss are huge and the gradients explode",
    "labels": ["exploding-gradients", "poor-initialization"],
    "also_ok": ["divergence", "nan-or-inf", "unstable-gradients", "lr-too-high", "initial-loss-mismatch",
                "loss-not-decreasing", "oscillation", "slow-start"],
    "fix": "initialize the Conv weights from N(0, 0.02)",
}


def tiles(n: int, g: torch.Generator):
    """Domain d tints a textured tile with its own stain colour (H&E-like hues)."""
    stains = torch.tensor([[0.9, 0.3, 0.6], [0.6, 0.2, 0.7], [0.8, 0.5, 0.5], [0.5, 0.4, 0.8], [0.9, 0.6, 0.3]])
    d = torch.arange(n) % 5
    tex = torch.rand(n, 1, 16, 16, generator=g)
    x = tex * stains[d].view(n, 3, 1, 1) + 0.15 * torch.randn(n, 3, 16, 16, generator=g)
    perm = torch.randperm(n, generator=g)
    return (x[perm] - 0.5) / 0.5, d[perm]


class MultiDomainDis(nn.Module):
    def __init__(self, ch: int = 32, n_domains: int = 5) -> None:
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride in [(ch, 1), (ch, 2), (2 * ch, 1), (2 * ch, 2), (4 * ch, 1), (4 * ch, 2)]:
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.model = nn.Sequential(*layers)
        self.cls = nn.Conv2d(c_in, n_domains, 2)      # 2x2 map -> one score per domain

    def forward(self, x):
        return self.cls(self.model(x)).flatten(1)


def gaussian_weights_init(std: float):
    def init(m):
        if m.__class__.__name__.find("Conv") == 0:
            m.weight.data.normal_(0.0, std)
    return init


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, d_train = tiles(480, g)
    x_val, d_val = tiles(160, g)
    dis = MultiDomainDis()
    dis.apply(gaussian_weights_init(0.02 if fixed else 0.2))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(dis.parameters(), lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4)
    probe = trainscope.watch(dis, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(6):
        dis.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            optimizer.zero_grad()
            loss = criterion(dis(x_train[idx]), d_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        dis.eval()
        with torch.no_grad():
            out = dis(x_val)
            probe.log(epoch=epoch, val_loss=criterion(out, d_val).item(),
                      val_acc=(out.argmax(1) == d_val).float().mean().item())
    probe.close()
