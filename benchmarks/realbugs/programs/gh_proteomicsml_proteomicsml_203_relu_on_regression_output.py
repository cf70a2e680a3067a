"""ProteomicsML/ProteomicsML#203: the tutorial's LSTM regressor ends with a ReLU; with an unlucky initialization
its pre-activation is negative for every peptide, so it predicts 0 for all of them and gets no gradient."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_proteomicsml_proteomicsml_203_relu_on_regression_output",
    "source": "https://github.com/ProteomicsML/ProteomicsML/pull/203 — Do not use ReLU activation for the final "
              "regression layer",
    "summary": "The ion-mobility (CCS) tutorial encodes peptides with an embedding + LSTM and regresses the "
               "(standardized) collisional cross section through a Linear layer followed by ReLU. 'In case of "
               "unlucky initialization the (pre-ReLU) output of the final linear layer can be always or almost "
               "always negative vanishing the gradient': the network returns constantly 0 for all peptides.",
    "labels": ["dead-relu"],
    "also_ok": ["zero-gradients", "output-activation-mismatch", "loss-not-decreasing", "underfitting",
                "collapsed-activations", "vanishing-gradients", "parameters-not-updated"],
    "fix": "drop the ReLU after the final regression layer (the PR's change)",
}

AMINO = 20
INIT_SEED = 3


class CCSNet(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(AMINO + 1, 16, padding_idx=0)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.out = nn.Linear(32 + 1, 1)  # last hidden state + precursor charge
        self.fixed = fixed

    def forward(self, seq, charge):
        _, (h, _) = self.lstm(self.embed(seq))
        y = self.out(torch.cat([h[-1], charge], 1))
        return y if self.fixed else torch.relu(y)


def peptides(n: int, g: torch.Generator):
    length = torch.randint(7, 21, (n,), generator=g)
    seq = torch.randint(1, AMINO + 1, (n, 20), generator=g)
    seq[torch.arange(20)[None, :] >= length[:, None]] = 0
    charge = torch.randint(2, 4, (n, 1), generator=g).float()
    mass = (seq > 0).float().sum(1, keepdim=True)
    ccs = 12.0 * mass / charge ** 0.5 + 0.8 * (seq == 5).float().sum(1, keepdim=True) * 5 + torch.randn(n, 1, generator=g) * 4
    return seq, charge, ccs


def run(run_dir: str, fixed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    seq, charge, ccs = peptides(1600, g)
    mean, std = ccs[:1300].mean(), ccs[:1300].std()
    target = (ccs - mean) / std + 2.0  # standardized CCS, shifted positive as in the tutorial's scaling
    torch.manual_seed(INIT_SEED)
    model = CCSNet(fixed)
    with torch.no_grad():  # reproduce the PR's 'unlucky initialization': the output starts negative for every input
        model.out.bias.fill_(-1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mse = nn.MSELoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=mse)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(1300, generator=g)
        for i in range(0, 1300, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = mse(model(seq[idx], charge[idx]), target[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=mse(model(seq[1300:], charge[1300:]), target[1300:]).item())
    probe.close()
