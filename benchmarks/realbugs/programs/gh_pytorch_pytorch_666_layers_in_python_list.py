"""pytorch/pytorch#666: hidden layers kept in a plain Python list are not parameters of the module."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_pytorch_pytorch_666_layers_in_python_list",
    "source": "https://github.com/pytorch/pytorch/issues/666 — nn.Module not importing parameters contained in lists",
    "summary": "A network built with the number of layers as an argument keeps them in "
               "self.list_of_layers = [nn.Linear(...) for i in range(num_layers)]; print(net) and "
               "net.parameters() show only the registered layer, so the optimizer never updates the listed "
               "layers and they stay at their random initialization.",
    "labels": ["parameters-not-updated"],
    "also_ok": ["underfitting", "loss-not-decreasing", "slow-start"],
    "fix": "wrap the list in nn.ModuleList (fmassa / the linked forum thread)",
}


class Net(nn.Module):
    def __init__(self, num_layers: int, fixed: bool) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 32)
        layers = [nn.Linear(32, 32) for i in range(num_layers)]
        self.list_of_layers = nn.ModuleList(layers) if fixed else layers
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        for layer in self.list_of_layers:
            h = torch.tanh(layer(h))
        return self.out(h)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 8, generator=g)
    y = (torch.sin(2 * x[:, :1]) * x[:, 1:2] + 0.5 * x[:, 2:3] ** 2)
    x_train, y_train, x_val, y_val = x[:1000], y[:1000], x[1000:], y[1000:]
    net = Net(4, fixed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    crit = nn.MSELoss()
    probe = trainscope.watch(net, run_dir, optimizer=opt, criterion=crit)
    for epoch in range(10):
        net.train()
        perm = torch.randperm(1000, generator=g)
        for i in range(0, 1000, 50):
            idx = perm[i:i + 50]
            opt.zero_grad()
            loss = crit(net(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        net.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=crit(net(x_val), y_val).item())
    probe.close()
