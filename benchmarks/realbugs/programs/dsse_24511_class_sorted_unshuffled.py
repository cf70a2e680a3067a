"""Port of a Data Science Stack Exchange question ("Why should the data be shuffled for machine learning
tasks"). The accepted answer: mini-batch SGD needs batches that are representative of the whole data;
data stored in order (here: grouped by class) gives batches of one class, each step pulls the model
towards that class, and the last classes seen win. Shuffle every epoch. Tiny scale: sklearn's digits
stored sorted by label (as read folder by folder) and fed by a DataLoader with shuffle=False."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainscope
from _data import digits

CASE = {
    "id": "dsse_24511_class_sorted_unshuffled",
    "source": "https://datascience.stackexchange.com/questions/24511/why-should-the-data-be-shuffled-for-machine-learning-tasks — Why should the data be shuffled for machine learning tasks",
    "summary": "training set sorted by class and never shuffled: every batch holds one class, the loss saw-tooths each epoch and validation accuracy stays low",
    "labels": ["unshuffled-data"],
    "also_ok": ["oscillation", "loss-not-decreasing", "underfitting", "unstable-gradients", "overfitting", "divergence",
                "no-early-stopping", "lr-too-high"],
    "fix": "DataLoader(..., shuffle=True)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits(sort_by_label=True)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=50, shuffle=fixed,
                        generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(6):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss)
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
    probe.close()
