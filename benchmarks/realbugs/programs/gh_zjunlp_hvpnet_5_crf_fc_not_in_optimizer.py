"""zjunlp/HVPNeT#5: in modules/train.py the NER trainer builds the optimizer from parameter groups; the groups for
the encoder are appended to the list, but the group built for the CRF and the final fc layer is never appended
(parameters.append(params) is missing after it), so "crf and fc will not be trained". The maintainer: "You're
right! ... we found this issue before and fixed it but forgot to push it". Tiny scale: the tagger's shape (a text
encoder, here an embedding + BiLSTM instead of BERT and without the visual prefix, a linear emission layer `fc`, a
linear-chain CRF with learned transitions), AdamW with two parameter groups, on synthetic sentences whose BIO tags
depend on the word and on the previous tag; validation is the token accuracy of Viterbi decoding."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_zjunlp_hvpnet_5_crf_fc_not_in_optimizer",
    "source": "https://github.com/zjunlp/HVPNeT/issues/5 — Not putting parameters into optimizer but still trainable",
    "summary": "the parameter group of the CRF and the emission fc layer is built but never added to the optimizer, "
               "so both keep their initial values while the encoder trains",
    "labels": ["parameters-not-updated"],
    "also_ok": [],
    "fix": "append the CRF/fc parameter group to the optimizer's parameter list",
}

V, TAGS, T = 40, 5, 16  # tags: O, B-PER, I-PER, B-LOC, I-LOC


class CRF(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.empty(n).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(n).uniform_(-0.1, 0.1))
        self.trans = nn.Parameter(torch.empty(n, n).uniform_(-0.1, 0.1))

    def nll(self, em, tags):
        b = torch.arange(em.shape[0])
        score = self.start[tags[:, 0]] + em[b, 0, tags[:, 0]]
        for t in range(1, em.shape[1]):
            score = score + self.trans[tags[:, t - 1], tags[:, t]] + em[b, t, tags[:, t]]
        score = score + self.end[tags[:, -1]]
        alpha = self.start + em[:, 0]
        for t in range(1, em.shape[1]):
            alpha = torch.logsumexp(alpha.unsqueeze(2) + self.trans + em[:, t].unsqueeze(1), dim=1)
        return (torch.logsumexp(alpha + self.end, 1) - score).mean()

    def decode(self, em):
        score, back = self.start + em[:, 0], []
        for t in range(1, em.shape[1]):
            s = score.unsqueeze(2) + self.trans + em[:, t].unsqueeze(1)
            score, idx = s.max(1)
            back.append(idx)
        best = (score + self.end).argmax(1)
        path = [best]
        for idx in reversed(back):
            best = idx.gather(1, best.unsqueeze(1)).squeeze(1)
            path.append(best)
        return torch.stack(path[::-1], 1)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, 32)
        self.encoder = nn.LSTM(32, 32, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(64, TAGS)
        self.crf = CRF(TAGS)

    def emissions(self, words):
        return self.fc(self.encoder(self.embed(words))[0])


def sentences(n: int, g: torch.Generator):
    """Words 0-19 are ordinary, 20-29 person names, 30-39 places; a name word starts an entity (B-) and the
    following name words of the same kind continue it (I-)."""
    words = torch.randint(0, 20, (n, T), generator=g)
    kind = torch.randint(0, 3, (n, T), generator=g)
    words = torch.where(kind == 1, torch.randint(20, 30, (n, T), generator=g), words)
    words = torch.where(kind == 2, torch.randint(30, 40, (n, T), generator=g), words)
    tags = torch.zeros(n, T, dtype=torch.long)
    for t in range(T):
        k = kind[:, t]
        cont = (t > 0) & (kind[:, t - 1] == k) if t > 0 else torch.zeros(n, dtype=torch.bool)
        tags[:, t] = torch.where(k == 1, torch.where(cont, 2, 1), torch.where(k == 2, torch.where(cont, 4, 3), 0))
    return words, tags


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    wtr, ttr = sentences(1200, g)
    wva, tva = sentences(300, g)
    model = Tagger()
    parameters = [{"params": list(model.embed.parameters()) + list(model.encoder.parameters()), "lr": 3e-3}]
    params = {"params": list(model.fc.parameters()) + list(model.crf.parameters()), "lr": 5e-2}
    if fixed:
        parameters.append(params)  # the missing line
    optimizer = torch.optim.AdamW(parameters, weight_decay=0.01)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(wtr), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            loss = model.crf.nll(model.emissions(wtr[idx]), ttr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            em = model.emissions(wva)
            probe.log(epoch=epoch, val_loss=model.crf.nll(em, tva).item(),
                      val_acc=(model.crf.decode(em) == tva).float().mean().item())
    probe.close()
