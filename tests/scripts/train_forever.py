"""A training process the kill test SIGKILLs mid-run: flushes every step, never closes.

The regular flushes are written by a background thread, so the script calls probe.flush() (synchronous:
everything so far is on disk when it returns) before it says "ready"; the kill then lands among the
background writes of the following steps."""
import sys

import torch
from torch import nn

import trainscope

run_dir = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.SGD(model.parameters(), lr=1e-2)
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=nn.CrossEntropyLoss(), every=5, flush_seconds=0.0)
step = 0
while True:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    probe.log(train_loss=loss)
    step += 1
    if step == 20:
        probe.flush()
        print("ready", flush=True)
