"""Port of the Stack Overflow question "What does model.eval() do in pytorch?". The accepted answer:
Dropout and BatchNorm behave differently at training and inference time; evaluate under
model.eval() (with torch.no_grad()), and switch back with model.train() afterwards. The asker's loop
validated under torch.no_grad() only. Tiny scale: an MLP with BatchNorm1d and Dropout(0.5) on sklearn's
digits, validated every epoch in small batches of 16; the buggy loop never calls model.eval()."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "so_60018578_validation_in_train_mode",
    "source": "https://stackoverflow.com/questions/60018578/what-does-model-eval-do-in-pytorch — What does model.eval() do in pytorch?",
    "summary": "MLP with BatchNorm1d and Dropout validated under torch.no_grad() but in train mode: validation batches update the BN running stats and dropout is on",
    "labels": ["train-mode-during-evaluation"],
    "also_ok": ["overfitting"],
    "fix": "model.eval() before the validation loop and model.train() after it",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(128, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(6):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 31, 32):
                idx = perm[i:i + 32]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            if fixed:
                model.eval()
            total, correct, n = 0.0, 0, 0
            with torch.no_grad():
                for i in range(0, len(xva), 16):
                    out = model(xva[i:i + 16])
                    total += criterion(out, yva[i:i + 16]).item() * len(out)
                    correct += (out.argmax(1) == yva[i:i + 16]).sum().item()
                    n += len(out)
            probe.log(epoch=epoch, val_loss=total / n, val_acc=correct / n)
            if fixed:
                model.train()
