"""Port of a PyTorch-forums thread ("CosineAnnealingLR step size (T_max)"). The answer: the paper
updates T_cur every iteration, so scheduler.step() belongs at the end of every batch iteration and T_max
should be num_epochs * len(dataloader); stepping per epoch with a T_max counted in batches anneals by
almost nothing. The asker's loop stepped once per epoch with T_max = epochs * len(loader). Tiny scale:
MLP on make_classification, SGD(lr=0.1), T_max = 8 epochs x 25 batches, stepped per epoch."""
import torch
from torch import nn

import trainscope
from _data import classification

CASE = {
    "id": "forum_104687_cosine_tmax_in_batches_stepped_per_epoch",
    "source": "https://discuss.pytorch.org/t/cosineannealinglr-step-size-t-max/104687 — CosineAnnealingLR step size (T_max)",
    "summary": "CosineAnnealingLR(T_max = epochs x batches) stepped once per epoch: after 8 of 200 scheduled steps the LR has barely moved",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["oscillation", "overfitting", "no-early-stopping"],
    "fix": "call scheduler.step() at the end of every batch iteration (T_max stays epochs x len(loader))",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = classification(n=1000, d=20, classes=3, n_val=300)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    epochs, bs = 8, 40
    n_batches = len(xtr) // bs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * n_batches)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion, scheduler=scheduler) as probe:
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(n_batches):
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
