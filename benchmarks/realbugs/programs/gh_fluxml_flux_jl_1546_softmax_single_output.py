"""FluxML/Flux.jl#1546: softmax over a single output unit; the loss never changes (ported from Flux to PyTorch)."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_fluxml_flux_jl_1546_softmax_single_output",
    "source": "https://github.com/FluxML/Flux.jl/issues/1546 — Softmax stucks the network",
    "summary": "A 2-2-1 network, model(x) = softmax(linear2(sigmoid(linear1(x)))), trained with MSE and ADAM: "
               "softmax over a single output is exactly 1 for every input, every gradient is zero, and the "
               "test loss printed each epoch is 0.28823234186242325 ten times. 'The network works fine without "
               "the softmax function.' Ported from Julia/Flux to the equivalent PyTorch model.",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["zero-gradients", "loss-not-decreasing", "underfitting", "vanishing-gradients",
                "collapsed-activations", "lr-too-low"],
    "fix": "remove the softmax from the single-unit output (the reporter's working variant)",
}


class MicroNet(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(2, 2)
        self.linear2 = nn.Linear(2, 1)
        self.fixed = fixed

    def forward(self, x):
        out = self.linear2(torch.sigmoid(self.linear1(x)))
        return out if self.fixed else torch.softmax(out, dim=1)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1100, 2, generator=g) * 2 - 1
    y = ((x[:, :1] + x[:, 1:]) > 0).float()  # a separable 0/1 target
    x_train, y_train, x_test, y_test = x[:1000], y[:1000], x[1000:], y[1000:]
    m = MicroNet(fixed)
    opt = torch.optim.Adam(m.parameters())  # Flux's ADAM() defaults: lr 1e-3
    mse = nn.MSELoss()
    probe = trainscope.watch(m, run_dir, optimizer=opt, criterion=mse)
    for epoch in range(10):
        for i in range(0, 1000, 10):
            opt.zero_grad()
            loss = mse(m(x_train[i:i + 10]), y_train[i:i + 10])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=mse(m(x_test), y_test).item())  # the evalcb's printed loss
    probe.close()
