"""Lightning-AI/pytorch-lightning#7096 (merged; discussion #7081): in pl_examples/domain_templates/
computer_vision_fine_tuning.py the model's forward() returns torch.sigmoid(self.fc(x)) while the loss is
F.binary_cross_entropy_with_logits, which applies a sigmoid again: the loss sees probabilities in (0, 1) as
logits, i.e. every prediction lies in sigmoid([0, 1]) = [0.5, 0.73]. The merged PR finally removed the sigmoid
from the forward pass (applying it only where probabilities are needed). Tiny scale: the example's shape -- a
frozen pretrained feature extractor (a fixed random conv stack stands in for ResNet50, trained neither way)
and the trainable head Linear-ReLU-Linear-Linear(1) -- on synthetic cats-vs-dogs images (two texture classes),
Adam lr=1e-3 on the head, BCE with logits called functionally (no criterion object)."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_lightning_ai_pytorch_lightning_7096_sigmoid_before_bce_with_logits",
    "source": "https://github.com/Lightning-AI/pytorch-lightning/pull/7096 — Fixed bug: replaced bce_loss_with_logits with bce_loss",
    "summary": "transfer-learning binary classifier whose forward() ends in torch.sigmoid, trained with "
               "F.binary_cross_entropy_with_logits: the sigmoid is applied twice, predictions never leave "
               "[0.5, 0.73] and the loss cannot go below ~0.5",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "initial-loss-mismatch"],
    "fix": "remove the sigmoid from forward(); the loss takes the logits (sigmoid only for reading probabilities)",
}


def images(n: int, g: torch.Generator):
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    stripes = torch.sin(torch.arange(16.0) * 1.6)
    x[y == 1] += 0.8 * stripes.view(1, 1, 1, 16)          # "dogs": vertical stripes
    x[y == 0] += 0.8 * stripes.view(1, 1, 16, 1)          # "cats": horizontal stripes
    return x, y.float()


class TransferLearningModel(nn.Module):
    def __init__(self, sigmoid_out: bool) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                               nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                               nn.AdaptiveAvgPool2d(2), nn.Flatten())
        for p in self.feature_extractor.parameters():   # frozen backbone (train_bn=False, milestones not reached)
            p.requires_grad = False
        self.fc = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16), nn.Linear(16, 1))
        self.sigmoid_out = sigmoid_out

    def forward(self, x):
        x = self.fc(self.feature_extractor(x))
        return torch.sigmoid(x) if self.sigmoid_out else x


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = images(640, g)
    x_val, y_val = images(160, g)
    model = TransferLearningModel(sigmoid_out=not fixed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    with trainscope.watch(model, run_dir, optimizer=optimizer) as probe:
        for epoch in range(8):
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(perm), 32):
                idx = perm[i:i + 32]
                optimizer.zero_grad()
                y_logits = model(x_train[idx]).view(-1)
                loss = F.binary_cross_entropy_with_logits(y_logits, y_train[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                y_logits = model(x_val).view(-1)
                y_scores = y_logits if not fixed else torch.sigmoid(y_logits)
                probe.log(epoch=epoch, val_loss=F.binary_cross_entropy_with_logits(y_logits, y_val),
                          val_acc=((y_scores >= 0.5).float() == y_val).float().mean())
