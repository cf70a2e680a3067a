"""danielkelshaw/ConcreteDropout#11: the MNIST example's MLP ends in nn.Softmax(dim=1) and its training loss
is F.cross_entropy(outputs, labels) + model.regularisation(), so the probabilities are softmaxed a second
time inside cross_entropy. The maintainer agreed and moved the softmax out of forward() (it is applied only
where predictions are read in test()). Tiny scale: the same 4-layer MLP with concrete dropout in front of
every linear layer (a compact rewrite of the learnable-rate dropout and its regulariser), on sklearn's 8x8
digits instead of MNIST. The example's default Adam lr=0.1 does not train even the fixed model at this
scale (loss 2.2 -> 19 -> stuck at 2.3), so both variants use Adam's default lr=1e-3 (NOTES.md)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_danielkelshaw_concretedropout_11_softmax_into_cross_entropy",
    "source": "https://github.com/danielkelshaw/ConcreteDropout/issues/11 — is softmax required?",
    "summary": "MLP with concrete dropout whose forward() ends in Softmax(dim=1), trained with the functional "
               "F.cross_entropy (no criterion object): cross_entropy applies log-softmax to probabilities, so "
               "the logits it sees are squeezed into [0, 1] and the gradient is weak",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "initial-loss-mismatch"],
    "fix": "remove the softmax from forward(); apply F.softmax only when reading predictions in test()",
}


class ConcreteDropout(nn.Module):
    """Dropout whose rate is learned (relaxed Bernoulli mask), with the weight/dropout regulariser."""

    def __init__(self, weight_reg: float = 1e-6, dropout_reg: float = 1e-3) -> None:
        super().__init__()
        self.weight_reg, self.dropout_reg = weight_reg, dropout_reg
        self.p_logit = nn.Parameter(torch.full((1,), math.log(0.1 / 0.9)))
        self.reg = torch.zeros(())

    def forward(self, x, layer):
        p = torch.sigmoid(self.p_logit)
        if self.training:
            eps, temp = 1e-7, 0.1
            u = torch.rand_like(x)
            drop = torch.sigmoid((torch.log(p + eps) - torch.log(1 - p + eps)
                                  + torch.log(u + eps) - torch.log(1 - u + eps)) / temp)
            x = x * (1 - drop) / (1 - p)
        out = layer(x)
        sq = sum(w.pow(2).sum() for w in layer.parameters())
        ent = p * torch.log(p) + (1 - p) * torch.log(1 - p)
        self.reg = self.weight_reg * sq / (1 - p) + self.dropout_reg * x[0].numel() * ent
        return out


class MLPConcreteDropout(nn.Module):
    def __init__(self, softmax_out: bool, n_hidden: int = 128) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, n_hidden), nn.Linear(n_hidden, n_hidden)
        self.fc3, self.fc4 = nn.Linear(n_hidden, n_hidden), nn.Linear(n_hidden, 10)
        self.cd = nn.ModuleList(ConcreteDropout() for _ in range(4))
        self.relu = nn.ReLU()
        self.softmax = nn.Softmax(dim=1)
        self.softmax_out = softmax_out

    def forward(self, x):
        x = self.cd[0](x, nn.Sequential(self.fc1, self.relu))
        x = self.cd[1](x, nn.Sequential(self.fc2, self.relu))
        x = self.cd[2](x, nn.Sequential(self.fc3, self.relu))
        x = self.cd[3](x, self.fc4)
        return self.softmax(x) if self.softmax_out else x

    def regularisation(self):
        return sum(cd.reg.sum() for cd in self.cd)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = MLPConcreteDropout(softmax_out=not fixed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimiser) as probe:
        for epoch in range(8):
            model.train()
            # the example's DataLoader is not shuffled; ours is not either
            for i in range(0, len(xtr), 64):
                data, labels = xtr[i:i + 64], ytr[i:i + 64]
                optimiser.zero_grad()
                outputs = model(data)
                loss = F.cross_entropy(outputs, labels) + model.regularisation()
                loss.backward()
                optimiser.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                outputs = model(xva)
                p_outputs = outputs if not fixed else F.softmax(outputs, dim=1)
                probe.log(epoch=epoch, val_loss=F.cross_entropy(outputs, yva),
                          val_acc=(p_outputs.argmax(1) == yva).float().mean())
