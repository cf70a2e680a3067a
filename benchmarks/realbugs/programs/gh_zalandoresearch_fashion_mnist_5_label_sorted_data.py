"""zalandoresearch/fashion-mnist#5: the data files were sorted by label; loaders that do not shuffle fail."""
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainscope

CASE = {
    "id": "gh_zalandoresearch_fashion_mnist_5_label_sorted_data",
    "source": "https://github.com/zalandoresearch/fashion-mnist/pull/5 — shuffling the dataset (response to #3)",
    "summary": "The first release stored the training set sorted by label (all 0s, then all 1s, ...); 'if people "
               "forget to shuffle the data by themselves, then learning algorithms may fail especially when "
               "using mini-batch'. Here a classifier is trained from a label-sorted tensor dataset with "
               "DataLoader(shuffle=False): each stretch of batches holds a single class and the network "
               "forgets the previous ones.",
    "labels": ["unshuffled-data"],
    "also_ok": ["oscillation", "loss-not-decreasing", "underfitting", "overfitting", "unstable-gradients",
                "no-early-stopping"],
    "fix": "shuffle the training data (DataLoader(..., shuffle=True); the dataset itself was re-released shuffled)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    x_val, y_val = x[1500:], y[1500:]
    order = torch.argsort(y[:1500], stable=True)  # the released files: sorted by label
    train_ds = TensorDataset(x[:1500][order], y[:1500][order])
    loader = DataLoader(train_ds, batch_size=50, shuffle=fixed, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=crit)
    for epoch in range(5):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            probe.log(epoch=epoch, val_loss=crit(out, y_val).item(), val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
