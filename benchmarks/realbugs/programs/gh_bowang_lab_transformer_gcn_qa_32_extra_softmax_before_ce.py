"""bowang-lab/Transformer-GCN-QA#32 (merged): "Because we didn't realize that CrossEntropyLoss() itself implements
a softmax, we had a second, erroneous softmax at the output of our model", likely "smoothing the final output logits
resulting in a lesser gradient signal during training". The output layer is a linear scorer over the candidate
answers; the PR removes the softmax. Tiny scale: the model's shape (entity-mention node features from an encoder,
a relational GCN over the document graph, a query-conditioned linear scorer, one score per candidate) on
synthetic multi-hop questions: 8 candidate nodes per question, the answer is the node connected to the query's
node whose features match the query; the pretrained transformer is replaced by fixed random features."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_bowang_lab_transformer_gcn_qa_32_extra_softmax_before_ce",
    "source": "https://github.com/bowang-lab/Transformer-GCN-QA/pull/32 — Removes erroneous extra softmax",
    "summary": "the candidate scorer ends in a softmax over the candidates and the scores go into "
               "nn.CrossEntropyLoss, which applies log-softmax again",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": [],
    "fix": "remove the softmax: the output layer returns the linear scores (logits) over the candidates",
}

N, F_IN, H = 8, 16, 32


class GCNQA(nn.Module):
    def __init__(self, extra_softmax: bool) -> None:
        super().__init__()
        self.enc = nn.Linear(F_IN, H)
        self.gcn = nn.ModuleList([nn.Linear(H, H) for _ in range(2)])
        self.q = nn.Linear(F_IN, H)
        self.out = nn.Sequential(nn.Linear(2 * H, H), nn.Tanh(), nn.Linear(H, 1))
        self.softmax = nn.Softmax(dim=-1) if extra_softmax else None

    def forward(self, nodes, adj, query):
        h = torch.relu(self.enc(nodes))
        deg = adj.sum(-1, keepdim=True).clamp(min=1)
        for layer in self.gcn:
            h = torch.relu(h + layer(adj @ h / deg))
        q = self.q(query).unsqueeze(1).expand(-1, N, -1)
        scores = self.out(torch.cat([h, q], -1)).squeeze(-1)
        return self.softmax(scores) if self.softmax is not None else scores


def questions(n: int, g: torch.Generator):
    nodes = torch.randn(n, N, F_IN, generator=g)
    adj = (torch.rand(n, N, N, generator=g) < 0.3).float()
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
    answer = torch.randint(0, N, (n,), generator=g)
    query = torch.randn(n, F_IN, generator=g) * 0.5
    nodes[torch.arange(n), answer] = query + 0.3 * torch.randn(n, F_IN, generator=g)
    return nodes, adj, query, answer


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ntr, atr, qtr, ytr = questions(1500, g)
    nva, ava, qva, yva = questions(300, g)
    model = GCNQA(extra_softmax=not fixed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(8):
        model.train()
        perm = torch.randperm(len(ntr), generator=g)
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            optimizer.zero_grad()
            loss = criterion(model(ntr[idx], atr[idx], qtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(nva, ava, qva)
            probe.log(epoch=epoch, val_loss=criterion(out, yva).item(),
                      val_acc=(out.argmax(1) == yva).float().mean().item())
    probe.close()
