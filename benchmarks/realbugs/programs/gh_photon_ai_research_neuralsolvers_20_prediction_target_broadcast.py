"""Photon-AI-Research/NeuralSolvers#20: the InitialCondition loss term computes norm(model(x), gt_y) with an MSE,
where the prediction is [batch_size, 1] and the dataset's ground truth is [batch_size]; PyTorch warns "Using a
target size ... that is different to the input size" and broadcasts the two to [batch_size, batch_size]. The
reporter found model(x).reshape(-1) removes it; the maintainer: shape the data correctly (targets of shape
[batch, 1]), and the reporter reshaped the dataset's tensor. Tiny scale: a physics-informed MLP (tanh, 2 -> 1) for
the 1-D heat equation u_t = k u_xx on x in [-1, 1], t in [0, 1], trained on an initial-condition term
(u(x, 0) = sin(pi x), the term with the shape bug), a PDE-residual term and a boundary term, with Adam;
validation is the MSE to the exact solution exp(-k pi^2 t) sin(pi x) on a grid."""
import math

import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_photon_ai_research_neuralsolvers_20_prediction_target_broadcast",
    "source": "https://github.com/Photon-AI-Research/NeuralSolvers/issues/20 — UserWarning in InitalCondition.py",
    "summary": "the PINN's initial-condition term is MSELoss(model(x) of shape [batch, 1], gt_y of shape [batch]), "
               "which broadcasts to [batch, batch] and fits every prediction to every target",
    "labels": ["loss-shape-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting"],
    "fix": "the initial-condition dataset returns its targets with shape [batch, 1], the shape of the prediction",
}

K = 0.1


def exact(x, t):
    return torch.exp(-K * math.pi ** 2 * t) * torch.sin(math.pi * x)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    mse = nn.MSELoss()
    # initial-condition dataset: points (x, 0) and u0(x); the bug is the shape of gt_y
    x0 = torch.rand(256, 1, generator=g) * 2 - 1
    ic_x = torch.cat([x0, torch.zeros_like(x0)], 1)
    ic_y = torch.sin(math.pi * x0)  # (256, 1)
    if not fixed:
        ic_y = ic_y.reshape(-1)  # (256,): what the dataset handed to the loss term
    gx, gt = torch.meshgrid(torch.linspace(-1, 1, 41), torch.linspace(0, 1, 21), indexing="ij")
    val_x = torch.stack([gx.reshape(-1), gt.reshape(-1)], 1)
    val_y = exact(val_x[:, :1], val_x[:, 1:])
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=mse)
    for step in range(1200):
        optimizer.zero_grad()
        initial = mse(model(ic_x), ic_y)
        pts = torch.cat([torch.rand(256, 1, generator=g) * 2 - 1, torch.rand(256, 1, generator=g)], 1)
        pts.requires_grad_(True)
        u = model(pts)
        du = torch.autograd.grad(u.sum(), pts, create_graph=True)[0]
        u_xx = torch.autograd.grad(du[:, 0].sum(), pts, create_graph=True)[0][:, 0]
        pde = (du[:, 1] - K * u_xx).pow(2).mean()
        tb = torch.rand(64, 1, generator=g)
        bnd = torch.cat([torch.cat([-torch.ones_like(tb), tb], 1), torch.cat([torch.ones_like(tb), tb], 1)])
        boundary = model(bnd).pow(2).mean()
        loss = initial + pde + boundary
        loss.backward()
        optimizer.step()
        probe.log(train_loss=loss.item(), initial_loss=initial.item())
        if step % 100 == 99:
            with torch.no_grad():
                probe.log(val_loss=mse(model(val_x), val_y).item())
    probe.close()
