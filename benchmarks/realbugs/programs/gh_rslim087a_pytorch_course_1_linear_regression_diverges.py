"""rslim087a/PyTorch-for-Deep-Learning-and-Computer-Vision-Course-All-Codes-#1: "I am using exactly the code as
per Linear_Regression.ipynb but it diverges!"; the answer that solved it: "dramatically decreasing the learning
rate. In my code lr = 0.00001 works perfectly." The notebook: X = randn(100, 1) * 10, y = X + 3 * randn(100,
1), model = nn.Linear(1, 1) (torch.manual_seed(1)), nn.MSELoss, SGD(lr=0.01), full-batch gradient descent.
With inputs of std 10 the loss curvature is 2*E[x^2] ~ 200, so lr=0.01 sits right at the stability limit
(2/200): for some draws of the data (ours: seed 0, curvature 210) every step overshoots and the loss grows
geometrically. The fix is the answer's lr=1e-5; both variants run 1000 full-batch epochs (the notebook's 100
are too few for lr=1e-5 to get anywhere; NOTES.md)."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_rslim087a_pytorch_course_1_linear_regression_diverges",
    "source": "https://github.com/rslim087a/PyTorch-for-Deep-Learning-and-Computer-Vision-Course-All-Codes-/issues/1 — Limear Regression diverges",
    "summary": "1-D linear regression on inputs of std 10, full-batch SGD at lr=0.01: the step is above the "
               "stability limit 2/curvature, each update overshoots further and the loss explodes to Inf/NaN",
    "labels": ["lr-too-high"],
    "also_ok": ["divergence", "nan-or-inf", "exploding-gradients", "unstable-gradients", "oscillation",
                "unnormalized-inputs", "no-validation"],
    "fix": "lower the learning rate to 1e-5",
    "fixed_ok": ["no-validation", "unnormalized-inputs"],  # the notebook never validates; its x ~ 10*randn
}


class LR(nn.Module):
    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)

    def forward(self, x):
        return self.linear(x)


def run(run_dir: str, fixed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(100, 1, generator=g) * 10
    y = X + 3 * torch.randn(100, 1, generator=g)
    torch.manual_seed(1)
    model = LR(1, 1)
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5 if fixed else 0.01)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for i in range(1000):
        y_pred = model(X)
        loss = criterion(y_pred, y)
        probe.log(epoch=i, train_loss=loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.close()
