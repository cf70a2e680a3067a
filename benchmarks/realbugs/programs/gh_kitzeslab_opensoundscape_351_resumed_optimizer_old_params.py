"""kitzeslab/opensoundscape#351: a model loaded from a checkpoint restores optimizer_params that still point at
the previous network's tensors, so continued training updates the old object, not the current network."""
import copy

import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_kitzeslab_opensoundscape_351_resumed_optimizer_old_params",
    "source": "https://github.com/kitzeslab/opensoundscape/issues/351 — Continuing training of CNN from loaded "
              "model may not be working",
    "summary": "load_model() overwrites self.optimizer_params with the saved dict, whose 'params' entry is the "
               "parameter list of the network that was saved, not of the freshly built model.network; "
               "_init_optimizer() builds the optimizer from it, so resumed training steps a stale copy and "
               "the network being trained never changes.",
    "labels": ["parameters-not-updated"],
    "also_ok": ["loss-not-decreasing", "underfitting", "lr-too-low"],
    "fix": "re-point the optimizer params at the current network after loading: "
           "model.optimizer_params['params'] = model.network.parameters()",
}


class CNN(nn.Module):
    """A small spectrogram classifier (2 classes: call present / absent)."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(8, 2))
        self.optimizer_params = {"params": self.network.parameters(), "lr": 0.01, "momentum": 0.9}

    def init_optimizer(self):
        params = dict(self.optimizer_params)
        params["params"] = list(params["params"])
        return torch.optim.SGD(**params)


def spectrograms(n: int, g: torch.Generator):
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    for i in torch.nonzero(y).flatten().tolist():  # a tonal call: a bright horizontal band
        r = int(torch.randint(2, 14, (1,), generator=g))
        x[i, 0, r, 3:13] += 2.0
    return x, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = spectrograms(640, g)
    x_val, y_val = spectrograms(160, g)
    saved = CNN()
    saved_dict = {"weights": copy.deepcopy(saved.network.state_dict()),
                  "optimizer_params": {"params": list(saved.network.parameters()), "lr": 0.01, "momentum": 0.9}}
    model = CNN()  # load_model(): a new object ...
    model.network.load_state_dict(saved_dict["weights"])
    model.optimizer_params = saved_dict["optimizer_params"]  # ... whose optimizer params point at `saved`
    if fixed:
        model.optimizer_params["params"] = model.network.parameters()
    optimizer = model.init_optimizer()
    crit = nn.CrossEntropyLoss()
    probe = trainscope.watch(model.network, run_dir, optimizer=optimizer, criterion=crit)
    for epoch in range(5):
        model.network.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            loss = crit(model.network(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.network.eval()
        with torch.no_grad():
            out = model.network(x_val)
            probe.log(epoch=epoch, val_loss=crit(out, y_val).item(), val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
