"""microsoft/nni#4521: after ModelSpeedup replaces the pruned layers, fine-tuning uses the old optimizer."""
import torch
from sklearn.datasets import load_digits
from torch import nn

import trainscope

CASE = {
    "id": "gh_microsoft_nni_4521_optimizer_holds_replaced_layers",
    "source": "https://github.com/microsoft/nni/issues/4521 — The parameters are not updated when the pruned model "
              "is finetuned",
    "summary": "The user prunes a trained model, calls m_speedup.speedup_model(), which replaces the pruned "
               "layers with smaller new ones (copying the kept weights), then fine-tunes with the optimizer "
               "built before the speedup: it still holds the replaced layers' tensors, so the new layers get "
               "gradients but are never updated.",
    "labels": ["parameters-not-updated"],
    "also_ok": ["loss-not-decreasing", "underfitting", "lr-too-low"],
    "fix": "create a new optimizer over the sped-up model's parameters after speedup (the maintainer's advice; "
           "the reporter: 'I solved this problem by redefining an optimizer')",
}


def speedup(model: nn.Sequential, keep: torch.Tensor) -> None:
    """What ModelSpeedup does for a pruned hidden layer: new, smaller Linear modules replace the old ones."""
    old1, old2 = model[0], model[2]
    new1, new2 = nn.Linear(old1.in_features, len(keep)), nn.Linear(len(keep), old2.out_features)
    with torch.no_grad():
        new1.weight.copy_(old1.weight[keep])
        new1.bias.copy_(old1.bias[keep])
        new2.weight.copy_(old2.weight[:, keep])
        new2.bias.copy_(old2.bias)
    model[0], model[2] = new1, new2


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(y)
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    # pre-train briefly (unrecorded), then prune 75% of the hidden units by L1 norm of their weights
    for _ in range(2):
        for i in range(0, 1500, 64):
            optimizer.zero_grad()
            crit(model(x_train[i:i + 64]), y_train[i:i + 64]).backward()
            optimizer.step()
    keep = model[0].weight.abs().sum(1).argsort(descending=True)[:32].sort().values
    speedup(model, keep)
    if fixed:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=crit)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(1500, generator=g)
        for i in range(0, 1500, 64):
            idx = perm[i:i + 64]
            optimizer.zero_grad()
            loss = crit(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            probe.log(epoch=epoch, val_loss=crit(out, y_val).item(), val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
