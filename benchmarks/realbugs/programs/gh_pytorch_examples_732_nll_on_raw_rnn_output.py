"""pytorch/examples#732 (merged): after CrossEntropyLoss was replaced by NLLLoss in word_language_model,
main.py took "NLLLoss of direct RNN output (not the LogSoftmax), resulting in negative losses": the RNNModel's
decoder returned raw scores. The fix makes RNNModel return F.log_softmax of its flattened output. Tiny scale:
the example's RNNModel (embedding, 2-layer LSTM, dropout, linear decoder) on a synthetic corpus drawn from a
random sparse Markov chain over 50 tokens, bptt=20, batch 16, and the example's own optimisation: plain SGD
with lr=20 applied by hand (p.data.add_(p.grad, alpha=-lr)) after clip_grad_norm_(0.25)."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_pytorch_examples_732_nll_on_raw_rnn_output",
    "source": "https://github.com/pytorch/examples/pull/732 — fix loss calculation for RNN",
    "summary": "word-level LSTM language model trained with NLLLoss on raw decoder scores (no log_softmax): "
               "the loss is -score[target], unbounded below; it turns negative and falls without limit while "
               "the model learns nothing about the next word",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["divergence", "nan-or-inf", "exploding-gradients", "unstable-gradients", "lr-too-high",
                "initial-loss-mismatch"],
    "fix": "return F.log_softmax(decoded, dim=1) from RNNModel.forward",
}

NTOKEN = 50


def corpus(n: int, succ: torch.Tensor, g: torch.Generator):
    tok = [0]
    for _ in range(n - 1):
        tok.append(int(succ[tok[-1], int(torch.randint(0, 3, (1,), generator=g))]))
    return torch.tensor(tok)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data[:nbatch * bsz].view(bsz, -1).t().contiguous()


class RNNModel(nn.Module):
    def __init__(self, log_softmax: bool, ninp: int = 32, nhid: int = 64, nlayers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(NTOKEN, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, NTOKEN)
        self.log_softmax = log_softmax
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, NTOKEN)
        return (F.log_softmax(decoded, dim=1) if self.log_softmax else decoded), hidden

    def init_hidden(self, bsz):
        return (torch.zeros(self.nlayers, bsz, self.nhid), torch.zeros(self.nlayers, bsz, self.nhid))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    succ = torch.randint(0, NTOKEN, (NTOKEN, 3), generator=g)   # each word has 3 likely successors
    train_data = batchify(corpus(16 * 20 * 30 + 1, succ, g), 16)
    val_data = batchify(corpus(8 * 20 * 10 + 1, succ, g), 8)
    model = RNNModel(log_softmax=fixed)
    criterion = nn.NLLLoss()
    lr, clip, bptt = 20.0, 0.25, 20
    probe = trainscope.watch(model, run_dir, criterion=criterion)
    for epoch in range(3):
        model.train()
        hidden = model.init_hidden(16)
        for i in range(0, train_data.size(0) - 1, bptt):
            seq_len = min(bptt, train_data.size(0) - 1 - i)
            data, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].reshape(-1)
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        total, hidden = 0.0, model.init_hidden(8)
        with torch.no_grad():
            for i in range(0, val_data.size(0) - 1, bptt):
                seq_len = min(bptt, val_data.size(0) - 1 - i)
                output, hidden = model(val_data[i:i + seq_len], hidden)
                total += seq_len * criterion(output, val_data[i + 1:i + 1 + seq_len].reshape(-1)).item()
        probe.log(epoch=epoch, val_loss=total / (val_data.size(0) - 1))
    probe.close()
