"""udacity/deep-learning-v2-pytorch#3: the solution notebooks (mnist_mlp_solution_with_validation, and the CIFAR-10
CNN one) validate and test without model.eval(), although the MLP has dropout. The author: "You're absolutely right!
Any model with dropout or batch normalization will have different behavior during training and evaluation. This
was an oversight of mine and I've just updated the code to include the two cases" (model.train() before the training
loop of each epoch, model.eval() before validation and test). The notebook's MLP (784 -> 512 -> 512 -> 10, ReLU,
dropout 0.2, CrossEntropyLoss, SGD lr 0.01, batch 20) tracks the validation loss each epoch and saves the model
whenever it improves. Tiny scale: the same MLP with 64 -> 128 -> 128 -> 10 on sklearn digits, 25 epochs. The notebook's
validation loop has no torch.no_grad() (kept in both variants); only model.train()/model.eval() differ."""
import copy

import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_udacity_deep_learning_v2_pytorch_3_validation_with_dropout_on",
    "source": "https://github.com/udacity/deep-learning-v2-pytorch/issues/3 — Issue about \"model.train()\" and "
              "\"model.eval()\"??",
    "summary": "the MLP with dropout is validated (and the best checkpoint chosen by that validation loss) without "
               "model.eval(), so dropout stays on during validation",
    "labels": ["train-mode-during-evaluation"],
    "also_ok": [],
    "fix": "model.train() before each epoch's training loop and model.eval() before validation (and test)",
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 128), nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        x = self.dropout(torch.relu(self.fc1(x)))
        x = self.dropout(torch.relu(self.fc2(x)))
        return self.fc3(x)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    valid_loss_min, best = float("inf"), None
    for epoch in range(25):
        if fixed:
            model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 20):
            idx = perm[i:i + 20]
            optimizer.zero_grad()
            loss = criterion(model(xtr[idx]), ytr[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        if fixed:
            model.eval()
        valid_loss, correct = 0.0, 0
        for i in range(0, len(xva), 20):  # the notebook's validation loop (no torch.no_grad())
            out = model(xva[i:i + 20])
            valid_loss += criterion(out, yva[i:i + 20]).item() * len(out)
            correct += (out.argmax(1) == yva[i:i + 20]).sum().item()
        valid_loss /= len(xva)
        probe.log(epoch=epoch, val_loss=valid_loss, val_acc=correct / len(xva))
        if valid_loss <= valid_loss_min:
            valid_loss_min, best = valid_loss, copy.deepcopy(model.state_dict())
    probe.close()
