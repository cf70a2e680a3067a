"""NVIDIA-Merlin/models#1175 (merged, labelled bug): "This PR changes the default loss in BinaryOutput to BCELoss.
Currently it's BCEWithLogitsLoss which means we apply sigmoid twice." The PyTorch BinaryOutput head ends in
Linear(1) + Sigmoid, and its default loss applied another sigmoid. The fix keeps the head and changes the
default loss to nn.BCELoss. Tiny scale: a click-through-rate model in the Merlin shape (embeddings of user and
item ids and a category, concatenated with 4 continuous features, an MLP block, BinaryOutput) on synthetic
interactions whose click probability depends on a user-item affinity and two continuous features; Adam(1e-3),
batch 256, 6 epochs."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_nvidia_merlin_models_1175_bce_with_logits_on_sigmoid_output",
    "source": "https://github.com/NVIDIA-Merlin/models/pull/1175 — Change default loss in BinaryOutput to BCELoss",
    "summary": "binary-classification head Linear(1) + Sigmoid trained with nn.BCEWithLogitsLoss: the loss applies a "
               "second sigmoid, so every prediction it sees lies in [0.5, 0.73] and the loss cannot fit the clicks",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "initial-loss-mismatch"],
    "fix": "use nn.BCELoss as BinaryOutput's default loss (the head already outputs probabilities)",
}

N_USERS, N_ITEMS, N_CATS = 200, 300, 12


def interactions(n: int, g: torch.Generator, ue: torch.Tensor, ie: torch.Tensor):
    u = torch.randint(0, N_USERS, (n,), generator=g)
    i = torch.randint(0, N_ITEMS, (n,), generator=g)
    c = i % N_CATS
    cont = torch.randn(n, 4, generator=g)
    logit = 2.5 * (ue[u] * ie[i]).sum(1) + 1.5 * cont[:, 0] - 1.0 * cont[:, 1] - 0.5
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return u, i, c, cont, y


class CTRModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.user = nn.Embedding(N_USERS, 16)
        self.item = nn.Embedding(N_ITEMS, 16)
        self.cat = nn.Embedding(N_CATS, 4)
        self.mlp = nn.Sequential(nn.Linear(16 + 16 + 4 + 4, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.binary_output = nn.Sequential(nn.Linear(32, 1), nn.Sigmoid())

    def forward(self, u, i, c, cont):
        x = torch.cat([self.user(u), self.item(i), self.cat(c), cont], 1)
        return self.binary_output(self.mlp(x)).squeeze(1)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ue, ie = 0.7 * torch.randn(N_USERS, 4, generator=g), 0.7 * torch.randn(N_ITEMS, 4, generator=g)
    train = interactions(20000, g, ue, ie)
    val = interactions(4000, g, ue, ie)
    model = CTRModel()
    loss_fn = nn.BCELoss() if fixed else nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=loss_fn)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(train[0]), generator=g)
        for s in range(0, len(perm), 256):
            idx = perm[s:s + 256]
            u, i, c, cont, y = (t[idx] for t in train)
            optimizer.zero_grad()
            loss = loss_fn(model(u, i, c, cont), y)
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            p = model(*val[:4])
            bce = nn.functional.binary_cross_entropy(p, val[4]).item()   # the probabilities' true log loss
            probe.log(epoch=epoch, val_loss=loss_fn(p, val[4]).item(), val_logloss=bce,
                      val_acc=((p > 0.5).float() == val[4]).float().mean().item())
    probe.close()
