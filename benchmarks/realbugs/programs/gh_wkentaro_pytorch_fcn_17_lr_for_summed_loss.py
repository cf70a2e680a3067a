"""wkentaro/pytorch-fcn#17: lr=1e-4 (the FCN paper's value for a per-pixel mean loss) with a loss summed over
pixels gives a NaN loss; the repository's own lr for the summed loss is orders of magnitude smaller."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_wkentaro_pytorch_fcn_17_lr_for_summed_loss",
    "source": "https://github.com/wkentaro/pytorch-fcn/issues/17 — Nan error while training",
    "summary": "The FCN trainer's cross-entropy is summed over all pixels (size_average=False) and trained with "
               "SGD momentum 0.99 at batch size 1. The reporter raised lr from the script's 1e-10 to 1e-4 "
               "('the same as in FCN paper') and the loss became NaN; the maintainer: the paper's value belongs "
               "to the normalised loss, 'you need to tune the learning rate when you change the loss func'.",
    "labels": ["lr-too-high"],
    "also_ok": ["divergence", "nan-or-inf", "exploding-gradients", "unstable-gradients", "oscillation",
                "dead-relu", "collapsed-activations", "loss-not-decreasing"],
    "fix": "go back to a learning rate sized for the summed loss (the script's 1e-10 for ~2e5-pixel VOC images); "
           "here, with 32x32 = 1024 pixels per image, lr = 1e-6",
}


class TinyFCN(nn.Module):
    def __init__(self, n_class: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.score = nn.Conv2d(32, n_class, 1)
        self.upscore = nn.ConvTranspose2d(n_class, n_class, 8, stride=4, padding=2, bias=False)

    def forward(self, x):
        return self.upscore(self.score(self.features(x)))


def scenes(n: int, g: torch.Generator):
    """Background (class 0) with a red square (class 1) and a green disc (class 2) at random places."""
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    lbl = torch.zeros(n, 32, 32, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for i in range(n):
        r, c = torch.randint(0, 22, (2,), generator=g).tolist()
        lbl[i, r:r + 10, c:c + 10] = 1
        cy, cx = (torch.rand(2, generator=g) * 20 + 6).tolist()
        lbl[i][((yy - cy) ** 2 + (xx - cx) ** 2) < 25] = 2
    x[:, 0] += 0.7 * (lbl == 1)
    x[:, 1] += 0.7 * (lbl == 2)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    return (x - mean) / std, lbl


def cross_entropy2d(score, target):
    """The trainer's loss: log_softmax + nll_loss summed over pixels (size_average=False)."""
    return F.nll_loss(F.log_softmax(score, dim=1), target, reduction="sum")


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = scenes(200, g)
    x_val, y_val = scenes(40, g)
    model = TinyFCN()
    lr = 1e-6 if fixed else 1e-4
    optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99, weight_decay=0.0005)
    probe = trainscope.watch(model, run_dir, optimizer=optim)
    for epoch in range(3):
        model.train()
        for i in torch.randperm(200, generator=g).tolist():  # batch size 1, as in the FCN trainer
            optim.zero_grad()
            loss = cross_entropy2d(model(x_train[i:i + 1]), y_train[i:i + 1])
            loss.backward()
            optim.step()
            probe.log(epoch=epoch, train_loss=loss.detach() / (32 * 32))  # the trainer logs loss / pixels
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=cross_entropy2d(model(x_val), y_val).item() / (40 * 32 * 32))
    probe.close()
