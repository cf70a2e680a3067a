"""Port of a PyTorch-forums thread ("Should a Learning Rate Scheduler adjust the learning rate at each
optimization step (batch) or at each epoch?"). The answer: it depends on the scheduler; epoch-based
schedulers such as StepLR(step_size in epochs) are stepped once per epoch, while warmup/transformer
schedules are sized in optimizer steps. The asker's loop stepped an epoch-sized StepLR inside the batch
loop, so the LR collapses within the first epoch. Tiny scale: MLP on sklearn's digits, SGD(lr=0.1),
StepLR(step_size=3, gamma=0.1) meant for 10 epochs; the fix moves scheduler.step() after the epoch."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "forum_182247_steplr_stepped_per_batch",
    "source": "https://discuss.pytorch.org/t/should-a-learning-rate-scheduler-adjust-the-learning-rate-at-each-optimization-step-batch-or-at-each-epoch/182247 — Should a Learning Rate Scheduler adjust the learning rate at each optimization step (batch) or at each epoch?",
    "summary": "StepLR(step_size=3 epochs, gamma=0.1) stepped every batch: the LR falls 10x every 3 batches and training freezes in the first epoch",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["lr-too-low", "underfitting", "loss-not-decreasing", "slow-start"],
    "fix": "call scheduler.step() once per epoch, after the batch loop",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion, scheduler=scheduler) as probe:
        for epoch in range(10):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 63, 64):
                idx = perm[i:i + 64]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                if not fixed:
                    scheduler.step()
                probe.log(epoch=epoch, train_loss=loss)
            if fixed:
                scheduler.step()
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
