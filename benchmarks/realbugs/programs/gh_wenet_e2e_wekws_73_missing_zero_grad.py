"""wenet-e2e/wekws#73 (merged, fixes #72): "in the training stage, when optimizer.step() is called,
optimizer.zero_grad() is not called". The executor's train loop does logits = model(feats), the max-pooling
keyword loss, loss.backward(), clip_grad_norm_(model.parameters(), 50), and optimizer.step() only when the norm is
finite; the fix adds optimizer.zero_grad() before loss.backward() (as the reviewer asked). Tiny scale: a small
keyword spotter (a linear preprocessing layer, a 2-layer GRU, a per-frame linear head with one sigmoid output per
keyword) on synthetic 20-dim "fbank" sequences of 40 frames, 2 keywords plus filler utterances; Adam at 1e-3."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_wenet_e2e_wekws_73_missing_zero_grad",
    "source": "https://github.com/wenet-e2e/wekws/pull/73 — [fix bug] add optimizer.zero_grad() in "
              "kws/utils/executor.py (#72)",
    "summary": "the keyword-spotting executor calls loss.backward(), clip_grad_norm_ and optimizer.step() but never "
               "optimizer.zero_grad(), so every step applies the sum of all past gradients",
    "labels": ["missing-zero-grad"],
    "also_ok": ["oscillation"],
    "fix": "call optimizer.zero_grad() before loss.backward() in every training step",
}

T, D, K = 40, 20, 2


class KWSModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.preprocessing = nn.Linear(D, 32)
        self.backbone = nn.GRU(32, 48, num_layers=2, batch_first=True)
        self.classifier = nn.Linear(48, K)

    def forward(self, feats):
        h, _ = self.backbone(torch.relu(self.preprocessing(feats)))
        return self.classifier(h)  # (B, T, K) frame logits


def max_pooling_loss(logits, target):
    """target: keyword index, or -1 for filler. Each keyword's utterance score is its max frame probability."""
    prob = torch.sigmoid(logits).max(dim=1).values.clamp(1e-7, 1 - 1e-7)  # (B, K)
    onehot = torch.zeros_like(prob)
    pos = target >= 0
    onehot[pos, target[pos]] = 1.0
    loss = F.binary_cross_entropy(prob, onehot)
    pred = torch.where(prob.max(1).values > 0.5, prob.argmax(1), torch.full_like(target, -1))
    return loss, (pred == target).float().mean().item()


def utterances(n: int, g: torch.Generator):
    feats = torch.randn(n, T, D, generator=g)
    target = torch.randint(-1, K, (n,), generator=g)
    patterns = torch.randn(K, 6, D, generator=torch.Generator().manual_seed(1)) * 3.0
    start = torch.randint(0, T - 6, (n,), generator=g)
    for i in range(n):
        if target[i] >= 0:
            s = int(start[i])
            feats[i, s:s + 6] += patterns[target[i]]
    return feats, target


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ftr, ytr = utterances(900, g)
    fva, yva = utterances(300, g)
    model = KWSModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(10):
        model.train()
        perm = torch.randperm(len(ftr), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            loss, acc = max_pooling_loss(model(ftr[idx]), ytr[idx])
            if fixed:
                optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 50.0)
            if torch.isfinite(grad_norm):
                optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item(), train_acc=acc)
        model.eval()
        with torch.no_grad():
            loss, acc = max_pooling_loss(model(fva), yva)
        probe.log(epoch=epoch, val_loss=loss.item(), val_acc=acc)
    probe.close()
