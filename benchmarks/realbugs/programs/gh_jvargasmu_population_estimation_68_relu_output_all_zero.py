"""jvargasmu/population_estimation#68: "Sometimes the initial solution predicts only zeros (due to RELU activation).
And hence, no gradients emerge. We should maybe change this to a softRelu/Softplus." The scale network predicts a
per-pixel occupancy scale that multiplies the building count; the pixel populations are summed over each
administrative region and compared with the census count, so the output must be non-negative, and the last
activation was a ReLU. Tiny scale: a 6-covariate pixel MLP (6 -> 16 -> 16 -> 1, ReLU hidden layers), regions of 40
pixels with synthetic building counts and census totals, MSE on the region totals (in thousands), Adam 1e-3.
"Sometimes": with PyTorch's default init, 44 of the first 300 torch seeds give a net whose output is <= 0 on every
pixel of this data; the port builds the net under one of them (seed 5). The fix is the issue's Softplus."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_jvargasmu_population_estimation_68_relu_output_all_zero",
    "source": "https://github.com/jvargasmu/population_estimation/issues/68 — Sometimes the initial solution "
              "predicts only zeros (due to RELU activation)",
    "summary": "the scale network's final ReLU is 0 on every pixel from the start, so the predicted region "
               "populations are all 0 and no gradient reaches any weight",
    "labels": ["dead-relu"],
    "also_ok": ["zero-gradients", "loss-not-decreasing", "underfitting", "parameters-not-updated",
                "collapsed-activations", "initial-loss-mismatch"],
    "fix": "replace the final ReLU of the scale network by a Softplus",
}

P = 40  # pixels per region


def regions(n: int, g: torch.Generator):
    cov = torch.randn(n, P, 6, generator=g)
    buildings = torch.poisson(torch.full((n, P), 6.0), generator=g)
    true_scale = torch.nn.functional.softplus(1.0 + cov[..., 0] - 0.5 * cov[..., 1] + 0.3 * cov[..., 2])
    census = (true_scale * buildings).sum(1)
    return cov, buildings, census / 1000.0


def run(run_dir: str, fixed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    ctr, btr, ytr = regions(300, g)
    cva, bva, yva = regions(80, g)
    torch.manual_seed(5)  # an unlucky draw (see the docstring)
    scale_net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1),
                              nn.Softplus() if fixed else nn.ReLU())
    optimizer = torch.optim.Adam(scale_net.parameters(), lr=1e-3)
    mse = nn.MSELoss()

    def predict(cov, buildings):
        return (scale_net(cov).squeeze(-1) * buildings).sum(1) / 1000.0

    probe = trainscope.watch(scale_net, run_dir, optimizer=optimizer, criterion=mse)
    for epoch in range(30):
        scale_net.train()
        perm = torch.randperm(len(ctr), generator=g)
        for i in range(0, len(perm), 20):
            idx = perm[i:i + 20]
            optimizer.zero_grad()
            loss = mse(predict(ctr[idx], btr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        scale_net.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=mse(predict(cva, bva), yva).item())
    probe.close()
