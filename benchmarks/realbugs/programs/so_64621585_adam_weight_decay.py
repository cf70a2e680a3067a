"""Port of a Stack Overflow question: is torch.optim.Adam(weight_decay=0.01) the same as
torch.optim.AdamW(weight_decay=0.01)? The accepted answer: no. Adam adds wd * w to the gradient (an L2
penalty that Adam then rescales per coordinate), AdamW decays the weights directly (Loshchilov & Hutter).
The asker's intent was decoupled weight decay, so the fix is AdamW. Tiny scale: a 2-layer MLP on a
synthetic make_classification task, regularized with weight_decay=0.01."""
import torch
from torch import nn

import trainscope
from _data import classification

CASE = {
    "id": "so_64621585_adam_weight_decay",
    "source": "https://stackoverflow.com/questions/64621585/adamw-and-adam-with-weight-decay — AdamW and Adam with weight decay",
    "summary": "MLP regularized with torch.optim.Adam(weight_decay=0.01), meant as decoupled weight decay",
    "labels": ["adam-l2-weight-decay"],
    "also_ok": ["overfitting", "no-early-stopping"],
    "fix": "torch.optim.AdamW(weight_decay=0.01) instead of torch.optim.Adam(weight_decay=0.01)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = classification(n=1000, d=20, classes=3, n_val=300)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    opt_cls = torch.optim.AdamW if fixed else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)  # criterion not passed, as in the question
    for epoch in range(10):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 50):
            idx = perm[i:i + 50]
            optimizer.zero_grad()
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss)
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=loss_fn(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
    probe.close()
