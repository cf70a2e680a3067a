"""YXNTU/GeneralDyG#6: TransformerBinaryClassifier.forward ends with self.sigmoid(logits).squeeze(), and train.py's
criterion is F.binary_cross_entropy_with_logits on that output, so the prediction goes through the sigmoid twice
(the loss sees sigmoid(sigmoid(z)), which never goes below 0.5 nor above 0.73). The maintainer: "you're right. If
you remove it inside the model, training should be more stable". Tiny scale: the classifier's shape (token
features + the GNN embedding of each event, a Transformer encoder with a padding mask, mean pooling over the
valid tokens, a linear head) on synthetic event sequences whose label says whether an anomalous event pattern
occurs; the GNN embeddings are a fixed random projection here (no graph network is trained)."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_yxntu_generaldyg_6_sigmoid_before_bce_with_logits",
    "source": "https://github.com/YXNTU/GeneralDyG/issues/6 — Transformer outputs probabilities but training "
              "uses `BCEWithLogits` (double sigmoid)",
    "summary": "the binary classifier returns sigmoid(logits) and the training criterion is "
               "F.binary_cross_entropy_with_logits, so the sigmoid is applied twice",
    "labels": ["output-activation-mismatch"],
    "also_ok": [],
    "fix": "forward() returns the raw logits (the sigmoid is removed from the model); probabilities are taken "
           "with torch.sigmoid outside the loss",
}

T, D_IN, D = 12, 8, 32


class TransformerBinaryClassifier(nn.Module):
    def __init__(self, apply_sigmoid: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(D_IN, D)
        self.gnn_proj = nn.Linear(16, D)
        layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.classifier = nn.Linear(D, 1)
        self.sigmoid = nn.Sigmoid()
        self.apply_sigmoid = apply_sigmoid

    def forward(self, raw_input, gnn_output, mask):
        h = self.encoder(self.inp(raw_input) + self.gnn_proj(gnn_output), src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).float()
        mean_output = (h * m).sum(1) / m.sum(1)
        logits = self.classifier(mean_output)
        if self.apply_sigmoid:
            logits = self.sigmoid(logits)
        return logits.squeeze(-1)


def events(n: int, g: torch.Generator):
    x = torch.randn(n, T, D_IN, generator=g)
    lengths = torch.randint(6, T + 1, (n,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    y = (torch.rand(n, generator=g) < 0.4).float()
    # an anomalous sequence carries a burst on features 0-1 at one valid position
    pos = (torch.rand(n, generator=g) * lengths).long()
    x[torch.arange(n), pos, 0] += 2.5 * y
    x[torch.arange(n), pos, 1] -= 2.5 * y
    x = x * mask.unsqueeze(-1)
    proj = torch.randn(D_IN, 16, generator=torch.Generator().manual_seed(1)) / D_IN ** 0.5
    return x, torch.tanh(x @ proj), mask, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, gtr, mtr, ytr = events(1200, g)
    xva, gva, mva, yva = events(300, g)
    model = TransformerBinaryClassifier(apply_sigmoid=not fixed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def criterion(logits, labels):
        return torch.mean(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))

    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(8):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            optimizer.zero_grad()
            loss = criterion(model(xtr[idx], gtr[idx], mtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(xva, gva, mva)
            prob = out if not fixed else torch.sigmoid(out)
            probe.log(epoch=epoch, val_loss=criterion(out, yva).item(),
                      val_acc=((prob > 0.5).float() == yva).float().mean().item())
    probe.close()
