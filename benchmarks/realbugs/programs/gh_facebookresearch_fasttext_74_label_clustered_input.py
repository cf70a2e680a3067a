"""facebookresearch/fastText#74: a classifier trained on a file whose lines are grouped by label scores poorly."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_facebookresearch_fasttext_74_label_clustered_input",
    "source": "https://github.com/facebookresearch/fastText/issues/74 — Low performance of trained classfier when "
              "the input labels are clustered",
    "summary": "A fastText-style bag-of-words classifier (embedding bag + linear layer, fastText's init, SGD at "
               "its default lr 0.1 decaying linearly to 0 over 5 epochs, loss summed per example as fastText "
               "updates per line) reads its training lines in file order, and the file is grouped by label "
               "(__label__a lines, then __label__b, ...). SGD sees one class at a time; precision and recall "
               "are much lower than with shuffled lines.",
    "labels": ["unshuffled-data"],
    "also_ok": ["oscillation", "loss-not-decreasing", "underfitting", "unstable-gradients", "overfitting",
                "no-early-stopping"],
    "fix": "shuffle the training lines before training (EdouardGrave: 'it is important to shuffle the training data')",
}

VOCAB, CLASSES, WORDS = 500, 4, 12


class FastText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(VOCAB, 10, mode="mean")
        self.fc = nn.Linear(10, CLASSES)
        nn.init.uniform_(self.embed.weight, -1 / 10, 1 / 10)  # fastText: input vectors U(-1/dim, 1/dim)
        nn.init.zeros_(self.fc.weight)  # ... and the output matrix starts at zero
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens):
        return self.fc(self.embed(tokens))


def corpus(n: int, g: torch.Generator):
    """Each class favours its own 40 topic words; the rest of a line is common words."""
    y = torch.randint(0, CLASSES, (n,), generator=g)
    tok = torch.randint(200, VOCAB, (n, WORDS), generator=g)
    topic = y[:, None] * 40 + torch.randint(0, 40, (n, 4), generator=g)
    tok[:, :4] = topic
    return tok, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = corpus(2000, g)
    order = torch.argsort(y, stable=True)  # the training file: lines grouped by label
    x, y = x[order], y[order]
    x_val, y_val = corpus(400, g)
    model = FastText()
    epochs, bs = 5, 20
    total = epochs * (len(x) // bs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss(reduction="sum")  # fastText: one SGD update per line
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=crit)
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g) if fixed else torch.arange(len(x))
        for i in range(0, len(x), bs):
            for group in opt.param_groups:  # fastText's linearly decaying learning rate
                group["lr"] = 0.1 * (1 - step / total)
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = crit(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            probe.log(epoch=epoch, train_loss=loss.detach() / len(idx))  # reported per line
        with torch.no_grad():
            out = model(x_val)
            probe.log(epoch=epoch, val_loss=crit(out, y_val).item() / len(y_val), val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
