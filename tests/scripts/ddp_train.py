"""Run with: torchrun --nproc_per_node=2 tests/scripts/ddp_train.py RUN_DIR (gloo, CPU)."""
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import trainscope

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
crit = nn.CrossEntropyLoss()
g = torch.Generator().manual_seed(100 + rank)  # each rank sees its own shard of data
x = torch.randn(128, 8, generator=g)
y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
with trainscope.watch(model, sys.argv[1], optimizer=opt, criterion=crit, every=5) as probe:
    for epoch in range(2):
        for i in range(0, 128, 16):
            opt.zero_grad()
            loss = crit(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
        probe.log(epoch=epoch, val_loss=loss.detach())
dist.destroy_process_group()
