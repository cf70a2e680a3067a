"""pytorch/vision#7818: torchvision's FGVCAircraft dataset lists its samples sorted by class (0, 0, ..., 99, 99),
"which causes much worse/biased performance unless the DataLoader is shuffled". The maintainers: it is expected that
datasets keep their original order; "where shuffling matters i.e. during training jobs, the Dataloader should be
used and it shuffles" (shuffle=True). Tiny scale: a class-sorted image dataset (sklearn digits ordered by label
instead of 100 aircraft variants), a small CNN with Adam 1e-3, a torch DataLoader over it with shuffle=False (the
report) or shuffle=True (the fix); validation accuracy on a held-out split each epoch."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainscope
from _data import digits

CASE = {
    "id": "gh_pytorch_vision_7818_class_ordered_dataset_unshuffled",
    "source": "https://github.com/pytorch/vision/issues/7818 — AirCraft dataset samples are organized sequentially, "
              "which causes much Worse/biased performance unless Dataloader is shuffled",
    "summary": "the training dataset is ordered by class and the DataLoader does not shuffle, so every batch holds "
               "one class and the model drifts to whichever class it saw last",
    "labels": ["unshuffled-data"],
    "also_ok": ["oscillation", "underfitting"],
    "fix": "DataLoader(train_set, batch_size=32, shuffle=True)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits(flat=False, sort_by_label=True)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=fixed,
                        generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(10):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(xva)
            probe.log(epoch=epoch, val_loss=F.cross_entropy(out, yva).item(),
                      val_acc=(out.argmax(1) == yva).float().mean().item())
    probe.close()
