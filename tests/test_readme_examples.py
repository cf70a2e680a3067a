"""The README's framework examples run exactly as written (extracted from README.md, not copied here)."""
from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import trainscope

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEEDS = {"transformers": "transformers", "lightning": "lightning", "accelerate": "accelerate"}
RUN_DIRS = {"plain": "runs/plain", "transformers": "out/hf/trainscope", "lightning": "runs/lightning",
            "accelerate": "runs/accelerate", "ddp": "runs/ddp", "fsdp": "runs/fsdp"}


def examples() -> dict[str, str]:
    text = README.read_text()
    found = dict(re.findall(r"<!-- example:(\w+) -->\n```python\n(.*?)```", text, flags=re.S))
    assert set(found) == set(RUN_DIRS), sorted(found)
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.parametrize("name", ["plain", "transformers", "lightning", "accelerate"])
def test_readme_example_runs(tmp_path, monkeypatch, name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"the {name} example needs {NEEDS[name]}")
    script = tmp_path / f"example_{name}.py"  # not transformers.py: it would shadow the package
    script.write_text(examples()[name])
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runpy.run_path(str(script), run_name="__main__")  # in this process: the imports are paid once
    run = trainscope.load_run(tmp_path / RUN_DIRS[name])
    assert run.status == "finished" and run.meta["steps"] > 0
    assert len(run.scalar("train_loss")) > 0 and run.has_layers
    trainscope.diagnose(run)  # and the rules run on it


def _torchrun() -> str | None:
    local = Path(sys.executable).parent / "torchrun"
    return str(local) if local.exists() else shutil.which("torchrun")


@pytest.mark.slow  # two fresh interpreters importing torch: ~25 s on a busy 2-core machine
@pytest.mark.skipif(not os.environ.get("TRAINSCOPE_SLOW"), reason="set TRAINSCOPE_SLOW=1 (about 25 s)")
@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_readme_distributed_example_under_torchrun(tmp_path, name):
    import socket

    if name == "fsdp" and not hasattr(pytest.importorskip("torch.distributed.fsdp"), "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard (FSDP2)")
    script = tmp_path / "train.py"
    script.write_text(examples()[name])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([_torchrun(), "--nproc_per_node=2", f"--master_port={port}", str(script)], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = trainscope.load_run(tmp_path / RUN_DIRS[name])
    assert set(run.meta["ranks"]) == {"0", "1"} and sorted(run.scalars["rank"].unique()) == [0, 1]
    if name == "fsdp":  # merged: both ranks' rows hold the full model's norms
        gn = run.scalars[run.scalars.name == "grad_norm"].pivot_table(index="step", columns="rank", values="value")
        assert len(gn) == 8 and (gn[0] == gn[1]).all() and "sharding" in run.meta
        trainscope.diagnose(run)
