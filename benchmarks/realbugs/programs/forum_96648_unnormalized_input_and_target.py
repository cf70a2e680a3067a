"""PyTorch forums thread 96648, "Neural network could not learn on this type of data, why?": a 1 -> 50 -> 1 ReLU MLP
fitted with Adam (1e-3) and MSE to x = 1 .. 3999 with target x**3, full batch; the loss stays enormous and the
predictions never approach the curve. ptrblck's answer: normalize the input ("which is usually done anyway") and
also the target, train on the normalized target and un-normalize the predictions afterwards; his snippet "can
successfully learn the data using this approach". The port keeps the thread's model, data, optimizer and 1000
full-batch epochs; the thread logs only the training loss (no validation)."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "forum_96648_unnormalized_input_and_target",
    "source": "https://discuss.pytorch.org/t/neural-network-could-not-learn-on-this-type-of-data-why/96648 — "
              "Neural network could not learn on this type of data, why?",
    "summary": "a small ReLU MLP regresses x**3 from raw x in 1..3999 (targets up to 6.4e10) with Adam and MSE; "
               "nothing is normalized and the fit never improves",
    "labels": ["unnormalized-inputs"],
    "also_ok": ["loss-not-decreasing", "underfitting", "initial-loss-mismatch", "no-validation"],
    "fix": "standardize the input and the target (mean/std), train on the normalized target, un-normalize the "
           "predictions afterwards",
    "fixed_ok": ["no-validation"],
}


class Network(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, 50)
        self.fc2 = nn.Linear(50, 1)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x = torch.arange(1, 4000, dtype=torch.float32).unsqueeze(1)
    y = x ** 3
    if fixed:
        x = (x - x.mean()) / x.std()
        y_mean, y_std = y.mean(), y.std()
        y = (y - y_mean) / y_std
    model = Network()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.MSELoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(1000):
        optimizer.zero_grad()
        out = model(x)
        loss = criterion(out, y)
        loss.backward()
        optimizer.step()
        probe.log(epoch=epoch, train_loss=loss.item())
    probe.close()
