"""AnubhavGupta3377/Text-Classification-Models-Pytorch#9: "the input of nn.NLLLoss() is [expected] after logsoftmax
..., however, here only softmax is provided in model.py therefore, the loss is always negative. I only check the
Transformer model." Model_Transformer (read from the repository): embeddings + positional encoding, one encoder
layer (d_model 256, 8 heads, d_ff 512, dropout 0.1), the last position's feature -> fc -> nn.Softmax(); train.py:
Adam(lr=3e-4), nn.NLLLoss(), the lr halved at 1/3 and 2/3 of the epochs, validation accuracy every 100 iterations.
The fix is the issue's: log-probabilities into NLLLoss (nn.LogSoftmax). Tiny scale: d_model 64, 4 heads, d_ff 128
(PyTorch's TransformerEncoderLayer and a learned positional embedding instead of the repository's own modules), on
synthetic 4-class "news" token sequences (6 class keywords among 20 tokens) instead of AG News, 4 epochs of
4000; Adam at 1e-3 instead of the repository's 3e-4 (our scaling: at 3e-4 the fixed model reached only 0.47
validation accuracy in this budget)."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_anubhavgupta3377_text_classification_9_softmax_into_nll_loss",
    "source": "https://github.com/AnubhavGupta3377/Text-Classification-Models-Pytorch/issues/9 — NLLLoss",
    "summary": "the Transformer text classifier ends in nn.Softmax and is trained with nn.NLLLoss, which expects "
               "log-probabilities, so the loss is minus the probability (always negative)",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["initial-loss-mismatch"],
    "fix": "end the model in nn.LogSoftmax (log-probabilities into NLLLoss)",
}

V, T, D, C = 200, 20, 64, 4


class Transformer(nn.Module):
    def __init__(self, log_probs: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(T, D) * 0.02)
        layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc = nn.Linear(D, C)
        self.softmax = nn.LogSoftmax(dim=1) if log_probs else nn.Softmax(dim=1)

    def forward(self, x):
        encoded = self.encoder(self.embed(x) * D ** 0.5 + self.pos)
        return self.softmax(self.fc(encoded[:, -1, :]))


def news(n: int, g: torch.Generator):
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.randint(C * 10, V, (n, T), generator=g)
    for k in range(6):  # six keywords of the class (tokens 10*c .. 10*c+9) at random positions
        pos = torch.randint(0, T, (n,), generator=g)
        x[torch.arange(n), pos] = y * 10 + torch.randint(0, 10, (n,), generator=g)
    return x, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr = news(4000, g)
    xva, yva = news(400, g)
    model = Transformer(log_probs=fixed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_op = nn.NLLLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=loss_op)
    max_epochs, it = 4, 0
    model.train()
    for epoch in range(max_epochs):
        if epoch in (max_epochs // 3, 2 * max_epochs // 3):
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] / 2
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            loss = loss_op(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
            if it % 25 == 0:
                model.eval()
                with torch.no_grad():
                    acc = (model(xva).argmax(1) == yva).float().mean().item()
                probe.log(epoch=epoch, val_acc=acc)
                model.train()
            it += 1
    probe.close()
