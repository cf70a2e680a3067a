"""Port of the Stack Overflow question "Why do we have to normalize the input for an artificial neural
network?". The accepted answer (quoting the comp.ai.neural-nets FAQ): rescaling can in theory be undone
by the weights, but in practice standardized inputs make training faster and less likely to get stuck.
The asker fed raw numeric features. Tiny scale: a tanh MLP on make_classification features given in raw
units (each feature scaled by a factor between 1 and 300 and shifted, like prices, counts and ratios mixed);
the fix standardizes each feature with the training mean and std."""
import numpy as np
import torch
from torch import nn

import trainscope
from _data import classification

CASE = {
    "id": "so_4674623_unnormalized_inputs",
    "source": "https://stackoverflow.com/questions/4674623/why-do-we-have-to-normalize-the-input-for-an-artificial-neural-network — Why do we have to normalize the input for an artificial neural network?",
    "summary": "tanh MLP fed raw features whose scales range from 1 to 300: the first layer saturates and training crawls",
    "labels": ["unnormalized-inputs"],
    "also_ok": ["saturated-activations", "loss-not-decreasing", "underfitting", "slow-start", "initial-loss-mismatch",
                "oscillation", "lr-too-high", "unstable-gradients", "vanishing-gradients"],
    "fix": "standardize every input feature: (x - mean) / std with the training statistics",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = classification(n=1200, d=12, classes=3, n_val=300, informative=8)
    rng = np.random.RandomState(1)
    scale = torch.tensor(np.exp(rng.uniform(0, np.log(300), 12)), dtype=torch.float32)
    shift = torch.tensor(rng.uniform(0, 500, 12), dtype=torch.float32)
    xtr, xva = xtr * scale + shift, xva * scale + shift      # the raw measurements
    if fixed:
        mu, sd = xtr.mean(0), xtr.std(0)
        xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    model = nn.Sequential(nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 40):
            idx = perm[i:i + 40]
            optimizer.zero_grad()
            loss = criterion(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss)
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
    probe.close()
