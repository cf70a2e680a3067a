"""xuebinqin/BASNet#42: training the BatchNorm network with batch size 1 performs far worse than batch size 8."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_xuebinqin_basnet_42_batchnorm_batch_size_1",
    "source": "https://github.com/xuebinqin/BASNet/issues/42 — training with batch size =1 has too low performance",
    "summary": "BASNet's encoder-decoder uses BatchNorm after every convolution; trained with batch size 1 it "
               "reaches far lower quality than with the default batch size 8. The author: try a normalization "
               "that does not need large batches (group / instance / layer norm); the reporter: 'Performance "
               "has improved significantly.'",
    "labels": ["batchnorm-small-batch"],
    "also_ok": ["oscillation", "unstable-gradients", "overfitting", "underfitting"],
    "fix": "replace BatchNorm2d by GroupNorm (the advice the reporter applied), keeping batch size 1",
}


def norm(c: int, fixed: bool) -> nn.Module:
    return nn.GroupNorm(4, c) if fixed else nn.BatchNorm2d(c)


class TinyBASNet(nn.Module):
    """Predict-and-refine, shrunk: an encoder-decoder saliency predictor followed by a residual refinement block."""

    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), norm(16, fixed), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), norm(32, fixed), nn.ReLU())
        self.dec = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1), norm(16, fixed), nn.ReLU())
        self.out = nn.Conv2d(32, 1, 3, padding=1)
        self.refine = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), norm(16, fixed), nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x):
        e1 = self.enc1(x)
        coarse = self.out(torch.cat([self.dec(self.enc2(e1)), e1], 1))
        return coarse + self.refine(torch.sigmoid(coarse))


def scenes(n: int, g: torch.Generator):
    """A salient object (a bright, coloured ellipse) on a textured background; the target is its mask."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.4
    m = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * 8 + 4).tolist()
        ry, rx = (torch.rand(2, generator=g) * 3 + 2).tolist()
        m[i, 0] = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1).float()
    colour = torch.rand(n, 3, 1, 1, generator=g) + 0.5
    return x + colour * m, m


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = scenes(240, g)
    x_val, y_val = scenes(48, g)
    net = TinyBASNet(fixed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    bce = nn.BCEWithLogitsLoss()
    probe = trainscope.watch(net, run_dir, optimizer=optimizer, criterion=bce)
    for epoch in range(2):
        net.train()
        for i in torch.randperm(240, generator=g).tolist():  # batch_size_train = 1
            optimizer.zero_grad()
            loss = bce(net(x_train[i:i + 1]), y_train[i:i + 1])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        net.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=bce(net(x_val), y_val).item())
    probe.close()
