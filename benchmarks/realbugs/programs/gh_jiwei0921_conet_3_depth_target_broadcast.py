"""jiwei0921/CoNet#3: smooth_l1_loss between a (N,1,H,W) depth prediction and a (N,H,W) depth map broadcasts."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_jiwei0921_conet_3_depth_target_broadcast",
    "source": "https://github.com/jiwei0921/CoNet/issues/3 — There is a difference between the target size and "
              "the input size in smooth_l1_loss",
    "summary": "The depth branch predicts (2, 1, H, W) but the ground-truth depth is loaded as (2, H, W); "
               "F.smooth_l1_loss(pred_depth, depth, reduction='sum') broadcasts them to (2, 2, H, W) (PyTorch "
               "warns 'Using a target size ... different to the input size'), so every prediction is also "
               "pulled towards the other image's depth.",
    "labels": ["loss-shape-mismatch"],
    "also_ok": ["underfitting", "loss-not-decreasing"],
    "fix": "target = target.unsqueeze(1) so the depth map is (N, 1, H, W) like the prediction (the author's answer)",
}


class DepthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(16, 1, 1))

    def forward(self, x):
        return self.body(x)


def scenes(n: int, g: torch.Generator):
    """RGB images whose depth is a smooth function of position and of the image's own colours."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    a = torch.rand(n, 3, 1, 1, generator=g)
    img = a * torch.stack([xx, yy, xx * yy])[None] + 0.1 * torch.randn(n, 3, 16, 16, generator=g)
    depth = (img[:, 0] + 0.5 * img[:, 1] - img[:, 2]).clone()  # (N, H, W): no channel dim, as loaded
    return img, depth


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, depth = scenes(200, g)
    x_val, depth_val = scenes(50, g)
    model = DepthNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(3):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(perm), 2):  # batch size 2, as in the report
            idx = perm[i:i + 2]
            target = depth[idx]
            if fixed:
                target = target.unsqueeze(1)
            pred_depth = model(x[idx])
            loss = F.smooth_l1_loss(pred_depth, target, reduction="sum")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        with torch.no_grad():
            target = depth_val.unsqueeze(1) if fixed else depth_val
            probe.log(epoch=epoch, val_loss=F.smooth_l1_loss(model(x_val), target, reduction="sum").item() / 25)
    probe.close()
