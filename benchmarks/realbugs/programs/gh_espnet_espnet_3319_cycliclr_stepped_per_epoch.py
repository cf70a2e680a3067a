"""espnet/espnet#3319 (merged, "fix a bug in OneCycleLR and CyclicLR"): ESPnet2 classifies each scheduler as
stepped per batch or per epoch, and #3303 had put OneCycleLR and CyclicLR among the epoch schedulers: "OneCycleLR
and CyclicLR schedulers should be per iteration, not per epoch." A CyclicLR sized in iterations
(step_size_up=2 epochs' worth of batches) but stepped once per epoch barely leaves base_lr. Tiny scale: an MLP
classifier on sklearn's digits with SGD(momentum=0.9) and CyclicLR(base_lr=0.001, max_lr=0.1,
step_size_up=2*batches_per_epoch), 10 epochs; the scheduler is passed to watch() as ESPnet's trainer owns it."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_espnet_espnet_3319_cycliclr_stepped_per_epoch",
    "source": "https://github.com/espnet/espnet/pull/3319 — fix a bug in OneCycleLR and CyclicLR",
    "summary": "CyclicLR sized in iterations (step_size_up = 2 epochs of batches) stepped once per epoch: "
               "after 10 epochs the LR has climbed only 10 of its 36 steps up, so training runs near base_lr "
               "instead of cycling up to max_lr and back every 4 epochs",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["lr-too-low", "slow-start", "underfitting", "loss-not-decreasing"],
    "fix": "step CyclicLR (and OneCycleLR) after every batch",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    batches = (len(xtr) + 63) // 64
    scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.001, max_lr=0.1, step_size_up=2 * batches)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion, scheduler=scheduler) as probe:
        for epoch in range(10):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(perm), 64):
                idx = perm[i:i + 64]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                if fixed:
                    scheduler.step()
                probe.log(epoch=epoch, train_loss=loss)
            if not fixed:
                scheduler.step()
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
