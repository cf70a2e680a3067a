"""Port of a Cross Validated thread ("What are the advantages of ReLU over sigmoid function in deep
neural networks?"), answer 211359: sigmoids tend to vanish the gradient, since S'(a) = S(a)(1 - S(a))
is at most 1/4 and goes to 0 as |a| grows, so a deep stack multiplies it layer after layer; ReLU
does not. The asker's deep network used sigmoid hidden units. Tiny scale: an 8-hidden-layer sigmoid MLP
on sklearn's digits trained with SGD; the fix swaps the hidden sigmoids for ReLUs (and He init, as
ReLU nets are initialized)."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "statsse_211359_deep_sigmoid_vanishing",
    "source": "https://stats.stackexchange.com/a/211359 — What are the advantages of ReLU over sigmoid function in deep neural networks? (answer 211359)",
    "summary": "8 hidden sigmoid layers: the gradient shrinks by >4x per layer and the first layers barely learn; the loss sits near ln(10)",
    "labels": ["vanishing-gradients"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "saturated-activations", "lr-too-low",
                "collapsed-activations", "poor-initialization"],
    "fix": "ReLU instead of sigmoid in the hidden layers (He initialization)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    layers, width = [], 64
    for _ in range(8):
        lin = nn.Linear(width, 64)
        if fixed:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU() if fixed else nn.Sigmoid()]
        width = 64
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer) as probe:
        for epoch in range(6):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 63, 64):
                idx = perm[i:i + 64]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
