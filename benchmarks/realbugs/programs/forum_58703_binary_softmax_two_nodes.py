"""Port of a PyTorch-forums thread ("Two output nodes for binary classification"): a fully
convolutional binary classifier (conv + BatchNorm + pooling blocks, a last conv with 2 output channels)
ends in F.softmax. The answer: with two output nodes use nn.CrossEntropyLoss on class indices, and
"both approaches expect logits, so you should remove your softmax layer". Tiny scale: digits 8x8,
label = digit >= 5, a 3-block conv net ending in a 2-channel 1x1 conv and softmax, trained with
CrossEntropyLoss; the fix passes the logits."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "forum_58703_binary_softmax_two_nodes",
    "source": "https://discuss.pytorch.org/t/two-output-nodes-for-binary-classification/58703 — Two output nodes for binary classification",
    "summary": "binary conv classifier with 2 output channels and F.softmax before nn.CrossEntropyLoss",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["output-activation-mismatch", "underfitting", "slow-start", "loss-not-decreasing"],
    "fix": "remove the softmax and pass the 2 logits to nn.CrossEntropyLoss",
}


class FCN(nn.Module):
    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed
        self.conv_1, self.bn_1 = nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.conv_2, self.bn_2 = nn.Conv2d(12, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.conv_3, self.bn_3 = nn.Conv2d(24, 32, 2), nn.BatchNorm2d(32)
        self.conv_4 = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        out = F.max_pool2d(F.relu(self.bn_1(self.conv_1(x))), 2)    # 12 x 4 x 4
        out = F.max_pool2d(F.relu(self.bn_2(self.conv_2(out))), 2)  # 24 x 2 x 2
        out = F.relu(self.bn_3(self.conv_3(out)))                   # 32 x 1 x 1
        out = self.conv_4(out).flatten(1)                           # 2 logits
        return out if self.fixed else F.softmax(out, dim=1)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits(flat=False)
    ytr, yva = (ytr >= 5).long(), (yva >= 5).long()
    model = FCN(fixed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(4):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 31, 32):
                idx = perm[i:i + 32]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
