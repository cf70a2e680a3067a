"""Port of a Data Science Stack Exchange question ("What is the 'dying ReLU' problem in neural
networks?"), which quotes CS231n: a large gradient can push a ReLU unit's weights so it never fires
again, and "as much as 40% of your network can be dead if the learning rate is set too high". The
answers: a dead unit has zero gradient and cannot recover; use a proper learning rate (or leaky
ReLUs). Tiny scale: a 3-hidden-layer ReLU MLP on make_classification trained with SGD at lr=1.5; the
fix is lr=0.05 (the thread's "proper setting of the learning rate")."""
import torch
from torch import nn

import trainscope
from _data import classification

CASE = {
    "id": "dsse_5706_dying_relu_high_lr",
    "source": "https://datascience.stackexchange.com/questions/5706/what-is-the-dying-relu-problem-in-neural-networks — What is the \"dying ReLU\" problem in neural networks?",
    "summary": "ReLU MLP with a learning rate far too high: after the first large updates most hidden units never fire again",
    "labels": ["dead-relu"],
    "also_ok": ["lr-too-high", "loss-not-decreasing", "underfitting", "divergence", "oscillation",
                "collapsed-activations", "unstable-gradients", "exploding-gradients", "vanishing-gradients",
                "initial-loss-mismatch"],
    "fix": "lower the learning rate (1.5 -> 0.05)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = classification(n=1200, d=20, classes=4, n_val=300)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 if fixed else 1.5, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(6):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 40):
                idx = perm[i:i + 40]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
