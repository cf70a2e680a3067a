"""OpenLMLab/LOMO#50: full-parameter fine-tuning with LOMO (a fused SGD update, no momentum, gradient-norm clipping)
at learning rate 5e-5 on about ten thousand examples of a special format: the loss does not go down. The maintainer:
this is because the learning rate is too small; set it at the 1e-2 / 1e-3 level (LOMO is SGD, not Adam). Tiny
scale: a small causal language model (embedding, one Transformer decoder block, tied-size output layer) is first
pre-trained here for a few hundred Adam steps on a random Markov "language" (standing in for the pretrained LLM),
then fine-tuned on a new "special format" (the same successors with other probabilities) with plain SGD and clip 1.0, as
LOMO does; only the fine-tuning is watched. The fixed variant uses 1e-2."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_openlmlab_lomo_50_learning_rate_too_small",
    "source": "https://github.com/OpenLMLab/LOMO/issues/50 — 小学习率问题 (small learning rate problem)",
    "summary": "LOMO-style fine-tuning (plain SGD, clipped gradients) of a pretrained causal LM at lr 5e-5: the "
               "loss does not decrease",
    "labels": ["lr-too-low"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "raise the learning rate to the 1e-2 level (the maintainer: 1e-2 to 1e-3 for LOMO's SGD)",
}

V, L, D = 24, 32, 64


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, D)
        self.pos = nn.Embedding(L, D)
        self.block = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)
        self.register_buffer("causal", torch.triu(torch.full((L, L), float("-inf")), diagonal=1))

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        h = self.block(h, src_mask=self.causal[:idx.shape[1], :idx.shape[1]])
        return self.head(self.ln(h))


def markov(n: int, probs, g: torch.Generator):
    """Each token has 3 successors (the same ones in both "languages"), with the given probabilities."""
    gen = torch.Generator().manual_seed(1)
    trans = torch.zeros(V, V)
    for a in range(V):
        trans[a, torch.randperm(V, generator=gen)[:3]] = torch.tensor(probs)
    seq = torch.zeros(n, L + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, V, (n,), generator=g)
    for t in range(L):
        seq[:, t + 1] = torch.multinomial(trans[seq[:, t]], 1, generator=g).squeeze(1)
    return seq


def lm_loss(model, seq):
    logits = model(seq[:, :-1])
    return F.cross_entropy(logits.reshape(-1, V), seq[:, 1:].reshape(-1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = TinyLM()
    pre = markov(2000, (0.6, 0.3, 0.1), g)
    adam = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(300):  # "pretraining" (not watched)
        idx = torch.randint(0, len(pre), (32,), generator=g)
        adam.zero_grad()
        lm_loss(model, pre[idx]).backward()
        adam.step()
    train, val = markov(1000, (0.1, 0.3, 0.6), g), markov(200, (0.1, 0.3, 0.6), g)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2 if fixed else 5e-5)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(5):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(perm), 8):
            optimizer.zero_grad()
            loss = lm_loss(model, train[perm[i:i + 8]])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=lm_loss(model, val).item())
    probe.close()
