"""ariecattan/SciCo#2: validation and test losses feed softmaxed probabilities to CrossEntropyLoss."""
import torch
from sklearn.datasets import make_classification
from torch import nn

import trainscope

CASE = {
    "id": "gh_ariecattan_scico_2_softmax_in_validation_loss",
    "source": "https://github.com/ariecattan/SciCo/issues/2 — Double-softmax in validation loss",
    "summary": "The multiclass model's validation step turns the logits into probabilities with softmax and then "
               "passes them to CrossEntropyLoss, which softmaxes again: 'Validation loss quickly gets stuck "
               "around 1.0 and only decreases very slightly'; the minimum possible loss per example is ~0.74. "
               "Training loss is computed on the logits and is fine. Fixed by the authors.",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["overfitting", "no-early-stopping"],
    "fix": "compute the validation/test loss on the logits, not on softmax(logits)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    # pairwise relation classes between two mentions (SciCo: none / coref / parent / child), here from features
    x, y = make_classification(n_samples=2400, n_features=32, n_informative=16, n_classes=4,
                               n_clusters_per_class=1, class_sep=1.5, random_state=3)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x = (x - x[:2000].mean(0)) / x[:2000].std(0)
    x_train, y_train, x_val, y_val = x[:2000], y[:2000], x[2000:], y[2000:]
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=loss_fn)
    g = torch.Generator().manual_seed(0)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(2000, generator=g)
        for i in range(0, 2000, 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            scores = logits if fixed else torch.softmax(logits, dim=1)
            probe.log(epoch=epoch, val_loss=loss_fn(scores, y_val).item(),
                      val_acc=(logits.argmax(1) == y_val).float().mean().item())
    probe.close()
