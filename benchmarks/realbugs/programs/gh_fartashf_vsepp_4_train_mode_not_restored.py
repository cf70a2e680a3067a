"""fartashf/vsepp#4: validation switches the model to eval mode mid-epoch and training continues in eval mode."""
import torch
from sklearn.datasets import make_classification
from torch import nn

import trainscope

CASE = {
    "id": "gh_fartashf_vsepp_4_train_mode_not_restored",
    "source": "https://github.com/fartashf/vsepp/issues/4 — Finish validation without running model.train()",
    "summary": "train.py validates every val_step iterations (model.val_start() = eval mode) but calls "
               "model.train_start() only at the start of each epoch, so after the first validation the rest "
               "of the epoch trains with dropout off and BatchNorm frozen to running statistics.",
    "labels": ["eval-mode-during-training"],
    "also_ok": ["overfitting", "no-early-stopping"],
    "fix": "switch back to train mode (model.train_start()) after each validation",
}


class Encoder(nn.Module):
    """Stands in for VSE++'s image encoder: linear + BatchNorm + dropout, then an embedding/classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 128)
        self.bn = nn.BatchNorm1d(128)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(128, 5)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.fc(x)))))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x, y = make_classification(n_samples=2400, n_features=40, n_informative=12, n_classes=5,
                               n_clusters_per_class=1, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x = (x - x[:2000].mean(0)) / x[:2000].std(0)  # precomputed, normalized image features
    x_train, y_train, x_val, y_val = x[:2000], y[:2000], x[2000:], y[2000:]
    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    crit = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=crit)
    val_step = 20
    g = torch.Generator().manual_seed(0)
    it = 0
    for epoch in range(6):
        model.train()  # model.train_start(): only here, once per epoch
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = crit(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            it += 1
            probe.log(epoch=epoch, train_loss=loss.detach())
            if it % val_step == 0:
                model.eval()  # model.val_start()
                with torch.no_grad():
                    out = model(x_val)
                    probe.log(val_loss=crit(out, y_val).item(), val_acc=(out.argmax(1) == y_val).float().mean().item())
                if fixed:
                    model.train()
    probe.close()
