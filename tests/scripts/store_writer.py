"""A bare run-store writer (no torch: starts in a fraction of a second) that the store tests
SIGKILL at random moments and run twice on one directory.

    python store_writer.py RUN_DIR [--steps N]

Appends one scalars chunk holding `marker` = i per iteration (compacting every 4 chunks, so a kill
often lands inside a compaction) and prints i once the append returned. A refused second writer
prints `refused: <message>` and exits 3.
"""
import itertools
import sys

from trainscope.errors import TrainscopeError
from trainscope.store.writer import RunWriter, new_meta

run_dir = sys.argv[1]
steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 10**9
try:
    w = RunWriter(run_dir, compact_every=4)
except TrainscopeError as e:
    print(f"refused: {e}", flush=True)
    sys.exit(3)
meta = new_meta(name="bare", rank=0, world_size=1)
w.write_meta(meta)
print("ready", flush=True)
for i in itertools.islice(itertools.count(), steps):
    w.append("scalars", {"step": [i, i], "name": ["marker", "other"], "value": [float(i), -float(i)]})
    w.next_chunk()
    print(i, flush=True)
    if i % 10 == 0:
        w.write_meta({**meta, "steps": i + 1})
w.write_meta({**meta, "steps": steps, "status": "finished"})
print("closed", flush=True)
