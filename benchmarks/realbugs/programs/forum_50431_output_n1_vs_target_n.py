"""Port of a PyTorch-forums thread ("Why the model fail to converge without a manul weight
initialization?"). A one-layer linear regression y = 5 x1 + 3 x2 (inputs scaled by 100, RMSprop,
MSELoss) only converged after the asker replaced the weight by a 1-D Parameter([2, 3]). Reading the
script: forward() calls x.squeeze() without assigning it, so the model returns (N, 1) against targets of
shape (N,); MSELoss broadcasts that to (N, N) and fits the mean. The 1-D weight "fix" worked only because
it made the output (N,). The fix addressed here: return x.squeeze(1) (or compare against y.unsqueeze(1)).
Tiny scale: the same data generator and model, fewer samples and epochs."""
import numpy as np
import torch

import trainscope

CASE = {
    "id": "forum_50431_output_n1_vs_target_n",
    "source": "https://discuss.pytorch.org/t/why-the-model-fail-to-converge-without-a-manul-weight-initialization/50431 — Why the model fail to converge without a manul weight initialization?",
    "summary": "linear regression whose forward discards x.squeeze(): output (N,1) against target (N,) broadcasts to (N,N) in MSELoss; the loss oscillates in the hundreds of thousands",
    "labels": ["loss-shape-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "oscillation", "unnormalized-inputs", "lr-too-high",
                "unstable-gradients"],
    "fix": "assign the squeeze in forward (x = x.squeeze(1)) so the output has the target's shape (N,)",
    "fixed_ok": ["unnormalized-inputs", "no-validation"],  # the thread's inputs are x100 and it never validates
}


class Net(torch.nn.Module):
    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed
        self.layer1 = torch.nn.Linear(2, 1, bias=False)

    def forward(self, x):
        x = self.layer1(x)
        if self.fixed:
            x = x.squeeze(1)
        else:
            x.squeeze()  # result discarded, as in the thread
        return x


def run(run_dir: str, fixed: bool) -> None:
    rng = np.random.RandomState(0)
    data = rng.randn(3000, 3)
    data[:, :2] = data[:, :2] * 100
    data[:, 2] = 5 * data[:, 0] + 3 * data[:, 1] + rng.randn(3000)
    data = torch.tensor(data, dtype=torch.float32)
    train_x, train_y = data[:, :2], data[:, 2]
    torch.manual_seed(0)
    net = Net(fixed)
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.RMSprop(net.parameters(), lr=0.01)
    with trainscope.watch(net, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(4):
            for i in range(0, 3000, 100):
                optimizer.zero_grad()
                loss = criterion(net(train_x[i:i + 100]), train_y[i:i + 100])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
