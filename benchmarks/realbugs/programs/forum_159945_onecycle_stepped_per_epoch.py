"""Port of a PyTorch-forums thread ("How to use OneCycleLR"). The asker built
OneCycleLR(optimizer, max_lr, epochs=..., steps_per_epoch=len(loader)) for CIFAR-10 and was unsure how
epochs/steps_per_epoch and stepping relate; the answer and the docs: the 1cycle policy changes the LR
after every batch, so scheduler.step() goes inside the batch loop (total steps = epochs x
steps_per_epoch). Stepped once per epoch, the schedule never leaves its warmup: the LR stays near
max_lr/25 for the whole run. Tiny scale: a small CNN on sklearn's 8x8 digits, Adam, OneCycleLR(max_lr=0.005)."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "forum_159945_onecycle_stepped_per_epoch",
    "source": "https://discuss.pytorch.org/t/how-to-use-onecyclelr/159945 — How to use OneCycleLR",
    "summary": "OneCycleLR sized in batches (epochs x steps_per_epoch) but stepped once per epoch: the LR never leaves the warmup",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["lr-too-low", "slow-start", "underfitting"],
    "fix": "call scheduler.step() after every optimizer.step() (inside the batch loop)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits(flat=False)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    epochs, bs = 4, 64
    steps_per_epoch = len(xtr) // bs
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.001)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.005, epochs=epochs,
                                                    steps_per_epoch=steps_per_epoch)
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)  # scheduler not passed: the probe reads the LR trace
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
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
    probe.close()
