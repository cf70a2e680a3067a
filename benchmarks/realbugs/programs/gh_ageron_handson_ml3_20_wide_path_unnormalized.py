"""ageron/handson-ml3#20 (merged, "Oh great catch"): the Wide & Deep regressor of chapter 10 normalizes its
inputs for the deep path only; the wide path concatenated the raw input with the last hidden layer, so the
output layer saw the unnormalized California-housing features ("the wide and deep example is using
non-normalized inputs which leads to performance degradation"). The fix concatenates the normalized inputs.
Tiny scale, in PyTorch: the same model (a Normalization layer adapted on the training set, Dense(30)-ReLU x2,
concat, Dense(1)), Adam(lr=1e-3), MSE, 20 epochs, batch 32, on synthetic data with the 8 California-housing
columns' means and spreads (MedInc ~3.9, HouseAge ~29, AveRooms ~5.4, AveBedrms ~1.1, Population ~1400
+- 1100, AveOccup ~3, Latitude ~35.6, Longitude ~-119.6; no download) and a target in units of $100k."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_ageron_handson_ml3_20_wide_path_unnormalized",
    "source": "https://github.com/ageron/handson-ml3/pull/20 — Fixing wide-and-deep to use normalized inputs",
    "summary": "Wide & Deep MLP: the deep path gets normalized features but the wide path feeds the raw "
               "features (Population ~1400, Longitude ~-120) straight into the output layer; the loss starts "
               "huge and the model ends worse than with normalized inputs",
    "labels": ["unnormalized-inputs"],
    "also_ok": ["lr-too-high", "initial-loss-mismatch", "unstable-gradients", "exploding-gradients",
                "loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "concatenate the normalized inputs (not the raw ones) with the deep path's output",
}

MEANS = [3.87, 28.6, 5.43, 1.10, 1425.0, 3.07, 35.6, -119.6]
STDS = [1.90, 12.6, 2.47, 0.47, 1132.0, 1.0, 2.14, 2.0]


def housing(n: int, g: torch.Generator):
    z = torch.randn(n, 8, generator=g)
    x = z * torch.tensor(STDS) + torch.tensor(MEANS)
    y = 2.07 + 0.8 * z[:, 0] + 0.1 * z[:, 1] - 0.25 * z[:, 3] + 0.2 * torch.tanh(z[:, 2]) \
        - 0.4 * z[:, 6] * z[:, 7] / 2 + 0.3 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


class Normalization(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def adapt(self, x) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0))

    def forward(self, x):
        return (x - self.mean) / self.std


class WideAndDeep(nn.Module):
    def __init__(self, wide_normalized: bool) -> None:
        super().__init__()
        self.normalization_layer = Normalization(8)
        self.hidden_layer1, self.hidden_layer2 = nn.Linear(8, 30), nn.Linear(30, 30)
        self.output_layer = nn.Linear(38, 1)
        self.wide_normalized = wide_normalized

    def forward(self, input_):
        normalized = self.normalization_layer(input_)
        hidden2 = torch.relu(self.hidden_layer2(torch.relu(self.hidden_layer1(normalized))))
        wide = normalized if self.wide_normalized else input_
        return self.output_layer(torch.cat([wide, hidden2], 1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    X_train, y_train = housing(3000, g)
    X_valid, y_valid = housing(800, g)
    model = WideAndDeep(wide_normalized=fixed)
    model.normalization_layer.adapt(X_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mse = nn.MSELoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=mse)
    for epoch in range(20):
        model.train()
        perm = torch.randperm(len(X_train), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            loss = mse(model(X_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=mse(model(X_valid), y_valid).item())
    probe.close()
