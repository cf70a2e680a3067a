"""matteo-dunnhofer/imagenet#10: training AlexNet, "after 3 epochs loss didn't change at all". The asker later found
the cause in his own modification of the training code: "I was reducing learning rate by 10 every step, so learning
rate was almost 0. When I correct it, loss was dropping down normally ... I started with learning rate 0.001. After
10 epochs I divide learning rate by 10." Tiny scale: an AlexNet-shaped CNN (conv/ReLU/max-pool blocks, two dropout
FC layers) on sklearn digits (8x8, 10 classes), momentum SGD (0.9), 12 epochs of batch 16. The asker's start lr
0.001 does not train this port in 12 epochs even with the correct schedule, so both variants start at 0.01 (our
scaling for a run ~1000x shorter than ImageNet's); the decay by 10 after 10 epochs is the asker's. The schedule is hand-written
(param_group['lr'] /= 10): in the buggy variant the division meant for every 10 epochs runs after every optimizer
step; nothing is passed to watch() but the optimizer."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_matteo_dunnhofer_imagenet_10_lr_divided_every_step",
    "source": "https://github.com/matteo-dunnhofer/imagenet/issues/10 — loss progress",
    "summary": "a hand-written step decay (divide the learning rate by 10) meant for every 10 epochs runs after "
               "every optimizer step, so the learning rate is ~0 after a few steps and the loss stays flat",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["lr-too-low", "loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "divide the learning rate by 10 once every 10 epochs (at the epoch boundary), not at every step",
}


class AlexNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 2 * 2, 128), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr, xva, yva = digits(flat=False)
    model = AlexNetish()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(12):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            if not fixed:  # the bug: the decay runs at every step
                for group in optimizer.param_groups:
                    group["lr"] /= 10
            probe.log(epoch=epoch, train_loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        if fixed and (epoch + 1) % 10 == 0:
            for group in optimizer.param_groups:
                group["lr"] /= 10
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=F.cross_entropy(out, yva).item(),
                      val_acc=(out.argmax(1) == yva).float().mean().item())
    probe.close()
