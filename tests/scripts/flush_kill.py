"""A training process the store tests SIGKILL at random moments.

    python flush_kill.py RUN_DIR [--no-flush] [--resume] [--steps N]

Logs `marker` = the step at every optimizer step, flushes after each (so a kill lands inside a
flush or a compaction most of the time) and prints the step once that flush returned. With
--no-flush it never flushes (a kill before the first flush). (watch() never raises: a second writer
of a live run dir gets a probe that records nothing; store_writer.py shows the refusal itself.)
"""
import itertools
import sys

import torch
from torch import nn

import trainscope
from trainscope.errors import TrainscopeError

run_dir = sys.argv[1]
flush = "--no-flush" not in sys.argv
resume = "--resume" in sys.argv
steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 10**9
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=1e-2)
x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
options = dict(optimizer=opt, every=4, flush_seconds=0.0 if flush else 1e9, flush_rows=1 if flush else 10**9)
if resume:
    options["resume"] = True
try:
    probe = trainscope.watch(model, run_dir, **options)
except TrainscopeError as e:
    print(f"refused: {e}", flush=True)
    sys.exit(3)
print("ready", flush=True)
first = int(sys.argv[sys.argv.index("--first") + 1]) if "--first" in sys.argv else 0
for step in itertools.islice(itertools.count(first), steps):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    probe.log(step=step, marker=float(step))
    if flush:
        probe.flush()
        print(step, flush=True)
probe.close()
print("closed", flush=True)
