"""spro/practical-pytorch#9: in the char-RNN name-classification tutorial, the asker replaced the manual update
(p.data.add_(-learning_rate, p.grad.data)) by torch.optim.SGD(rnn.parameters(), lr=0.005) and optimizer.step(), and
"the loss is big, flows up and down, does not diminish". The author found the cause: the notebook instantiates the
model twice, once right after the RNN class and again before the training loop, so the optimizer holds the first
instance's parameters while the second one is trained; "try moving the optimizer to below the second one". Tiny
scale: the tutorial's RNN (i2h and i2o linear layers on [input, hidden], LogSoftmax, NLLLoss, one name per step,
rnn.zero_grad() in train()), on synthetic "names" of 4 languages, each with its own letter distribution over a
12-letter alphabet. The tutorial's 100k iterations at lr 0.005 are replaced by 2500 iterations at lr 0.02 (our
scaling); the training loss is logged per step and the accuracy on held-out names every 250 steps."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_spro_practical_pytorch_9_optimizer_on_first_model_instance",
    "source": "https://github.com/spro/practical-pytorch/issues/9 — char-rnn-classification parameters update "
              "method confusion",
    "summary": "the model is instantiated twice and the SGD optimizer was built on the first instance, so "
               "optimizer.step() never touches the parameters of the RNN that is actually trained",
    "labels": ["parameters-not-updated"],
    "also_ok": ["loss-not-decreasing", "underfitting", "no-validation"],
    "fix": "build the optimizer after the second instantiation, on the parameters of the model being trained",
}

N_LETTERS, N_CATEGORIES, N_HIDDEN = 12, 4, 64


class RNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(input_size + hidden_size, output_size)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, inp, hidden):
        combined = torch.cat((inp, hidden), 1)
        return self.softmax(self.i2o(combined)), self.i2h(combined)

    def init_hidden(self):
        return torch.zeros(1, self.hidden_size)


def make_names(n: int, g: torch.Generator):
    probs = torch.softmax(2.0 * torch.randn(N_CATEGORIES, N_LETTERS, generator=torch.Generator().manual_seed(1)), 1)
    cats = torch.randint(0, N_CATEGORIES, (n,), generator=g)
    names = []
    for c in cats.tolist():
        length = int(torch.randint(3, 9, (1,), generator=g))
        letters = torch.multinomial(probs[c], length, replacement=True, generator=g)
        names.append(torch.nn.functional.one_hot(letters, N_LETTERS).float().unsqueeze(1))  # (len, 1, n_letters)
    return names, cats


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train_names, train_cats = make_names(2500, g)
    val_names, val_cats = make_names(300, g)
    rnn = RNN(N_LETTERS, N_HIDDEN, N_CATEGORIES)  # the first instantiation (right after the class)
    learning_rate = 0.02
    criterion = nn.NLLLoss()
    if not fixed:
        optimizer = torch.optim.SGD(rnn.parameters(), lr=learning_rate)
    rnn = RNN(N_LETTERS, N_HIDDEN, N_CATEGORIES)  # the second instantiation (before the training loop)
    if fixed:
        optimizer = torch.optim.SGD(rnn.parameters(), lr=learning_rate)

    def classify(line):
        hidden = rnn.init_hidden()
        for i in range(line.size(0)):
            output, hidden = rnn(line[i], hidden)
        return output

    def train(category, line):
        rnn.zero_grad()
        output = classify(line)
        loss = criterion(output, category.view(1))
        loss.backward()
        optimizer.step()
        return loss.item()

    probe = trainscope.watch(rnn, run_dir, optimizer=optimizer, criterion=criterion)
    for it in range(len(train_names)):
        probe.log(train_loss=train(train_cats[it], train_names[it]))
        if (it + 1) % 250 == 0:
            with torch.no_grad():
                correct = sum(int(classify(l).argmax(1).item() == int(c)) for l, c in zip(val_names, val_cats))
            probe.log(val_acc=correct / len(val_names))
    probe.close()
