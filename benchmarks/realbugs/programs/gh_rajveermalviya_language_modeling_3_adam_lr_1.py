"""rajveermalviya/language-modeling#3: "the loss during training didn't really go down even after many epochs. I
think this is because you use learning rate of 1.0 in the config file. After I use Adam optimizer with its default
learning rate (which is 0.001), the training gets much better." The maintainer updated the config. The repository's
model (keras_model.py): Embedding(V, hidden) -> LSTM -> LSTM -> Dropout(0.5) -> TimeDistributed(Dense(V)) ->
softmax, categorical cross-entropy, Adam; CONFIG.py: num_steps 3, batch 20, hidden 200, 5 epochs. Tiny scale: the
same stack in PyTorch (the Dense + softmax + categorical cross-entropy is written as logits + nn.CrossEntropyLoss,
the equivalent PyTorch idiom), hidden 64, on a random Markov "corpus" of 50 words (3 likely successors per word)
instead of PTB; validation loss on held-out windows each epoch."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_rajveermalviya_language_modeling_3_adam_lr_1",
    "source": "https://github.com/rajveermalviya/language-modeling/issues/3 — Adam's learning rate",
    "summary": "a 2-layer LSTM word language model trained with Adam at learning rate 1.0 (from the config): the "
               "loss does not go down",
    "labels": ["lr-too-high"],
    "also_ok": ["loss-not-decreasing", "underfitting", "divergence", "oscillation", "unstable-gradients",
                "saturated-activations"],
    "fix": "Adam with its default learning rate 0.001",
}

V, H, STEPS = 50, 64, 3


class LSTMLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.lstm1 = nn.LSTM(H, H, batch_first=True)
        self.lstm2 = nn.LSTM(H, H, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.dense = nn.Linear(H, V)

    def forward(self, x):
        h, _ = self.lstm1(self.embed(x))
        h, _ = self.lstm2(h)
        return self.dense(self.drop(h))


def corpus(n_words: int, g: torch.Generator):
    gen = torch.Generator().manual_seed(1)
    trans = torch.zeros(V, V)
    for a in range(V):
        trans[a, torch.randperm(V, generator=gen)[:3]] = torch.tensor([0.6, 0.3, 0.1])
    words = torch.zeros(n_words, dtype=torch.long)
    for t in range(1, n_words):
        words[t] = torch.multinomial(trans[words[t - 1]], 1, generator=g)
    return words


def windows(words):
    n = (len(words) - 1) // STEPS
    x = words[:n * STEPS].reshape(n, STEPS)
    y = words[1:n * STEPS + 1].reshape(n, STEPS)
    return x, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr = windows(corpus(12000, g))
    xva, yva = windows(corpus(1500, g))
    model = LSTMLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 if fixed else 1.0)
    criterion = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(5):
        model.train()
        for i in range(0, len(xtr) - 19, 20):  # batches in corpus order, as the Keras generator yields them
            optimizer.zero_grad()
            loss = criterion(model(xtr[i:i + 20]).reshape(-1, V), ytr[i:i + 20].reshape(-1))
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(xva).reshape(-1, V)
            probe.log(epoch=epoch, val_loss=criterion(out, yva.reshape(-1)).item(),
                      val_acc=(out.argmax(1) == yva.reshape(-1)).float().mean().item())
    probe.close()
