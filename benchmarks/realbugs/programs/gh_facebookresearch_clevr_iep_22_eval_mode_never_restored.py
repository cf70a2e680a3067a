"""facebookresearch/clevr-iep#22 (merged): scripts/train_model.py calls set_mode('train', ...) once before the
training loop; check_accuracy(), run every checkpoint_every iterations on the training and the validation
loader, calls set_mode('eval', ...) and never switches back, so after the first checkpoint every remaining
iteration trains with dropout off and BatchNorm frozen. The fix adds set_mode('train', ...) at the end of
check_accuracy(). Tiny scale: the LSTM baseline (word embedding, 1-layer LSTM, classifier MLP with
BatchNorm1d + dropout, as LstmModel with fc_use_batchnorm and fc_dropout) on synthetic "questions" whose
answer is a function of two token positions; Adam lr=2e-3; checkpoint every 40 iterations."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_facebookresearch_clevr_iep_22_eval_mode_never_restored",
    "source": "https://github.com/facebookresearch/clevr-iep/pull/22 — Fix potential problem for training",
    "summary": "check_accuracy() puts the model in eval mode and never back; after the first checkpoint the "
               "model trains in eval mode (dropout off, BatchNorm using and no longer updating running statistics)",
    "labels": ["eval-mode-during-training"],
    "also_ok": ["overfitting", "no-early-stopping"],
    "fix": "set_mode('train', ...) at the end of check_accuracy()",
}

VOCAB, LEN, ANSWERS = 20, 8, 6


def questions(n: int, g: torch.Generator):
    q = torch.randint(1, VOCAB, (n, LEN), generator=g)
    a = (q[:, 2] % 3) * 2 + q[:, -1] % 2
    return q, a


class LstmModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.rnn = nn.LSTM(32, 64, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
                                nn.Linear(128, ANSWERS))

    def forward(self, q):
        out, _ = self.rnn(self.embed(q))
        return self.fc(out[:, -1])


def set_mode(mode: str, models) -> None:
    for m in models:
        if m is None:
            continue
        m.train() if mode == "train" else m.eval()


def check_accuracy(model, x, y, fixed: bool) -> float:
    set_mode("eval", [model])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    if fixed:
        set_mode("train", [model])
    return acc


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = questions(2048, g)
    x_val, y_val = questions(512, g)
    model = LstmModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=loss_fn)
    set_mode("train", [model])
    t = 0
    for epoch in range(10):
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            t += 1
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
            if t % 40 == 0:
                train_acc = check_accuracy(model, x_train[:512], y_train[:512], fixed)
                val_acc = check_accuracy(model, x_val, y_val, fixed)
                probe.log(train_acc=train_acc, val_acc=val_acc)
    probe.close()
