"""skorch-dev/skorch#481 (fixed by PR #491): NeuralNetClassifier expects the module to output probabilities
(a softmax) and its get_loss computes NLLLoss(torch.log(y_pred)). Running the MNIST example notebook with Adam
(or RMSprop) instead of SGD, the softmax saturated to exact 0/1, torch.log gave -inf and the loss became NaN.
The merged fix adds a small eps inside the log: log(y_pred + eps). Tiny scale: the notebook's
ClassifierModule (one hidden layer, ReLU, dropout, softmax output) on sklearn's digits, Adam at the
notebook's lr=0.1 (which the reporter kept when switching optimizer), the loss written out as skorch's
get_loss does it. At lr=0.01 no NaN appears at this scale."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_skorch_dev_skorch_481_log_of_softmax_nan",
    "source": "https://github.com/skorch-dev/skorch/issues/481 — torch.log(y_pred) in NeuralNetClassifier.get_loss may cause NaN",
    "summary": "softmax output, loss = nll_loss(torch.log(y_pred)); with Adam the softmax saturates, log(0) = -inf "
               "and the loss and every weight turn NaN",
    "labels": ["nan-or-inf"],
    "also_ok": ["divergence", "lr-too-high", "exploding-gradients", "unstable-gradients", "loss-not-decreasing",
                "output-activation-mismatch"],
    "fix": "add a small eps before the log: nll_loss(torch.log(y_pred + eps)) (eps = torch.finfo(dtype).eps)",
    "fixed_ok": ["lr-too-high"],  # Adam at the notebook's SGD rate 0.1, as reported; the fix does not touch it
}


class ClassifierModule(nn.Module):
    def __init__(self, hidden: int = 98, dropout: float = 0.5) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, hidden)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, 10)

    def forward(self, x):
        x = self.dropout(F.relu(self.hidden(x)))
        return F.softmax(self.output(x), dim=-1)


def get_loss(y_pred, y_true, fixed: bool):
    if fixed:
        y_pred = y_pred + torch.finfo(y_pred.dtype).eps
    return F.nll_loss(torch.log(y_pred), y_true)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    module = ClassifierModule()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(module, run_dir, optimizer=optimizer) as probe:
        for epoch in range(10):
            module.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(perm), 128):
                idx = perm[i:i + 128]
                optimizer.zero_grad()
                loss = get_loss(module(xtr[idx]), ytr[idx], fixed)
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss.item())
            module.eval()
            with torch.no_grad():
                y_pred = module(xva)
                probe.log(epoch=epoch, valid_loss=get_loss(y_pred, yva, fixed).item(),
                          valid_acc=(y_pred.argmax(1) == yva).float().mean().item())
