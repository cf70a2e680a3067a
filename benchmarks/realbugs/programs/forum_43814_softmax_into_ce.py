"""Port of a PyTorch-forums report: an MNIST MLP whose loss sits at 2.30 (= ln 10) epoch after epoch.
The model ended in nn.Softmax and the loss was nn.CrossEntropyLoss; the accepted advice (first in the
thread's summary) is to pass the raw logits, because CrossEntropyLoss already applies log_softmax.
Rewritten at tiny scale on sklearn's 8x8 digits."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "forum_43814_softmax_into_ce",
    "source": "https://discuss.pytorch.org/t/cross-entropy-loss-is-not-decreasing/43814 — Cross Entropy loss is not decreasing",
    "summary": "MLP classifier ending in nn.Softmax(dim=1) trained with nn.CrossEntropyLoss and SGD; the loss hovers at ln(10)",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["loss-not-decreasing", "underfitting", "output-activation-mismatch", "vanishing-gradients",
                "lr-too-low"],
    "fix": "drop the final nn.Softmax so CrossEntropyLoss receives logits",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    layers = [nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)]
    if not fixed:
        layers.append(nn.Softmax(dim=1))
    model = nn.Sequential(*layers)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(8):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 63, 64):
                idx = perm[i:i + 64]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss.item())
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva).item(),
                          val_acc=(out.argmax(1) == yva).float().mean().item())
