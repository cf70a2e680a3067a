"""optuna/optuna#1725 (merged): in examples/pytorch_simple.py, model.train() was called once before the epoch
loop, while the validation at the end of every epoch calls model.eval(). From the second epoch on the MLP trains
in eval mode, so its Dropout layers are off for all but the first epoch. The PR moves model.train() to the start
of every epoch. Tiny scale: the example's MLP (Linear -> ReLU -> Dropout per layer, LogSoftmax output,
F.nll_loss) with one fixed trial's choices (2 layers of 64 units, dropout 0.3, Adam 1e-3) on sklearn digits
instead of FashionMNIST, training on a limited number of batches per epoch as the example does."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_optuna_optuna_1725_train_mode_set_once",
    "source": "https://github.com/optuna/optuna/pull/1725 — Update pytorch_simple.py",
    "summary": "model.train() is called once before the epoch loop and the per-epoch validation calls "
               "model.eval(), so every epoch after the first trains with the model in eval mode (Dropout off)",
    "labels": ["eval-mode-during-training"],
    "also_ok": [],
    "fix": "call model.train() at the start of every epoch (before the training batches)",
}


def define_model() -> nn.Module:
    layers, in_features = [], 64
    for units, p in ((64, 0.3), (64, 0.3)):
        layers += [nn.Linear(in_features, units), nn.ReLU(), nn.Dropout(p)]
        in_features = units
    layers += [nn.Linear(in_features, 10), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*layers)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = define_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    batch, n_train_batches = 32, 30  # the example caps the examples seen per epoch
    if not fixed:
        model.train()  # the bug: only once, before the loop
    for epoch in range(12):
        if fixed:
            model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for b in range(n_train_batches):
            idx = perm[b * batch:(b + 1) * batch]
            optimizer.zero_grad()
            loss = F.nll_loss(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=F.nll_loss(out, yva).item(),
                      val_acc=(out.argmax(1) == yva).float().mean().item())
    probe.close()
