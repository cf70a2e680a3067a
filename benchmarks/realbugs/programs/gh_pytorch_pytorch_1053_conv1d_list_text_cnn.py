"""pytorch/pytorch#1053: a text CNN's Conv1d filters defined in a Python list are not registered submodules."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_pytorch_pytorch_1053_conv1d_list_text_cnn",
    "source": "https://github.com/pytorch/pytorch/issues/1053 — submodules defined in list are not auto-registered "
              "as parameters",
    "summary": "A Kim-style sentence CNN keeps its three Conv1d filters (kernel sizes 3, 4, 5 over word vectors) "
               "in self.conv1d = [...]; .cuda() did not move them and net.parameters() does not contain them, so "
               "the optimizer trains only the classifier on top of three frozen random filters.",
    "labels": ["parameters-not-updated"],
    "also_ok": ["underfitting", "slow-start"],
    "fix": "use nn.ModuleList for the convolutions (apaszke: 'This is expected. Use nn.ModuleList.')",
}

VOCAB, EMB, LEN = 200, 16, 20


class Net(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMB)
        convs = [nn.Conv1d(EMB, 1, 3), nn.Conv1d(EMB, 1, 4), nn.Conv1d(EMB, 1, 5)]
        self.conv1d = nn.ModuleList(convs) if fixed else convs
        self.fc = nn.Linear(3, 2)

    def forward(self, tokens):
        e = self.embed(tokens).transpose(1, 2)  # (N, EMB, LEN)
        feats = [torch.relu(c(e)).max(dim=2).values for c in self.conv1d]
        return self.fc(torch.cat(feats, 1))


def sentences(n: int, g: torch.Generator):
    """Label 1 iff the sentence contains one of 3 trigrams built from 'positive' words."""
    tok = torch.randint(0, VOCAB, (n, LEN), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    for i in torch.nonzero(y).flatten().tolist():
        p = int(torch.randint(0, LEN - 3, (1,), generator=g))
        k = int(torch.randint(0, 3, (1,), generator=g))
        tok[i, p:p + 3] = torch.tensor([10 + k, 20 + k, 30 + k])
    return tok, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = sentences(1600, g)
    x_val, y_val = sentences(400, g)
    net = Net(fixed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    probe = trainscope.watch(net, run_dir, optimizer=opt, criterion=crit)
    for epoch in range(8):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            opt.zero_grad()
            loss = crit(net(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        net.eval()
        with torch.no_grad():
            out = net(x_val)
            probe.log(epoch=epoch, val_loss=crit(out, y_val).item(), val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
