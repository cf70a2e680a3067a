"""Run the realbugs programs and loss logs, each in its own subprocess, and collect trainscope's findings.

    from benchmarks.realbugs import harness          # or: sys.path.insert(0, ".../benchmarks/realbugs")
    cases = harness.discover()                          # programs/*.py and logs/*.csv (+ .json)
    records = harness.run_all(cases, jobs=2)            # one record per (case, variant)

A program is `programs/<case_id>.py` defining `CASE` (a dict literal, see README.md) and
`run(run_dir, fixed)`. Each variant (buggy, fixed) runs in a fresh temporary run directory in a child
Python process with a timeout and OMP_NUM_THREADS=1, so one crash or hang costs only its own record.
A log is `logs/<case_id>.csv` with `logs/<case_id>.json` holding the same keys as `CASE`; it is
diagnosed directly (`trainscope.diagnose_report(path)`), as variant "log".

The status of a record is one of
    ok                 the program ran and diagnose returned findings
    program-error      the program itself raised (a bug in the port, not in trainscope)
    trainscope-crash   an exception raised inside trainscope (watch/probe/store/diagnose)
    timeout            the child ran past the timeout
Rules that crashed inside diagnose (the engine catches them) are listed in `crashed_rules` of an
`ok` record; the scorer reports them as trainscope crashes too.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROGRAMS = HERE / "programs"
LOGS = HERE / "logs"
TRAINSCOPE_DIR = (REPO / "trainscope").resolve()
CASE_KEYS = ("id", "source", "summary", "labels", "also_ok", "fix", "fixed_ok")


@dataclass
class Case:
    id: str
    kind: str  # "program" | "log"
    path: str  # the program (.py) or the log (.csv)
    source: str
    summary: str
    labels: list[str]
    also_ok: list[str]
    fix: str = ""
    fixed_ok: list[str] = field(default_factory=list)  # true of the fixed program too (e.g. it logs no validation)

    @property
    def split(self) -> str:
        return split_of(self.id)

    @property
    def variants(self) -> tuple[str, ...]:
        return ("buggy", "fixed") if self.kind == "program" else ("log",)


@dataclass
class Record:
    case: str
    variant: str  # "buggy" | "fixed" | "log"
    status: str  # ok | program-error | trainscope-crash | timeout
    findings: list[dict[str, Any]] = field(default_factory=list)  # {name, severity, message}
    crashed_rules: list[dict[str, str]] = field(default_factory=list)  # {name, error}
    error: str = ""
    run_s: float = 0.0  # the program's own run time (training + probe)
    diagnose_s: float = 0.0
    wall_s: float = 0.0  # the whole child process, Python start-up included


def split_of(case_id: str) -> str:
    """holdout iff int(sha1(case_id), 16) is odd; nobody chooses."""
    return "holdout" if int(hashlib.sha1(case_id.encode("utf-8")).hexdigest(), 16) % 2 == 1 else "tune"


def _case_literal(path: Path) -> dict[str, Any]:
    """The program's CASE dict, read without importing the program (no torch import per case)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CASE" for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "CASE":
            return ast.literal_eval(node.value)
    raise ValueError(f"{path}: no CASE = {{...}} literal at module level")


def _make_case(meta: dict[str, Any], kind: str, path: Path) -> Case:
    missing = [k for k in ("id", "source", "labels") if k not in meta]
    if missing:
        raise ValueError(f"{path}: CASE lacks {missing}")
    if meta["id"] != path.stem:
        raise ValueError(f"{path}: CASE id {meta['id']!r} is not the file name {path.stem!r}")
    return Case(id=meta["id"], kind=kind, path=str(path), source=meta["source"], summary=meta.get("summary", ""),
                labels=list(meta["labels"]), also_ok=list(meta.get("also_ok", [])), fix=meta.get("fix", ""),
                fixed_ok=list(meta.get("fixed_ok", [])))


def discover(programs: Path | str = PROGRAMS, logs: Path | str = LOGS) -> list[Case]:
    """Every program (programs/*.py not starting with '_') and every log (logs/*.csv with a .json)."""
    cases: list[Case] = []
    programs, logs = Path(programs), Path(logs)
    if programs.is_dir():
        for p in sorted(programs.glob("*.py")):
            if not p.name.startswith("_"):
                cases.append(_make_case(_case_literal(p), "program", p))
    if logs.is_dir():
        for p in sorted(logs.glob("*.csv")):
            meta_path = p.with_suffix(".json")
            if not meta_path.exists():
                raise ValueError(f"{p}: no {meta_path.name} with source/labels next to it")
            cases.append(_make_case(json.loads(meta_path.read_text(encoding="utf-8")), "log", p))
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate case ids: {dup}")
    return cases


def select(cases: list[Case], split: str = "all", only: list[str] | None = None) -> list[Case]:
    if split not in ("all", "tune", "holdout"):
        raise ValueError(f"split must be all, tune or holdout, not {split!r}")
    out = [c for c in cases if split == "all" or c.split == split]
    if only:
        unknown = sorted(set(only) - {c.id for c in cases})
        if unknown:
            raise ValueError(f"unknown case ids: {unknown}")
        out = [c for c in out if c.id in only]
    return out


# ---------------------------------------------------------------------------------------------
# The child process.

def _in_trainscope(tb: traceback.StackSummary) -> bool:
    """Did the exception start inside the trainscope package? Walks outward from the innermost frame,
    skipping library frames (torch, numpy, the standard library): the first frame that is trainscope's
    says yes, the first that is anything else (the program) says no."""
    try:
        import trainscope

        pkg = Path(trainscope.__file__).resolve().parent
    except Exception:  # noqa: BLE001
        pkg = TRAINSCOPE_DIR
    for fr in reversed(tb):
        if not fr.filename or fr.filename.startswith("<"):
            continue
        f = Path(fr.filename).resolve()
        if pkg in f.parents or TRAINSCOPE_DIR in f.parents:
            return True
        if HERE in f.parents or REPO in f.parents:
            return False
    return False


def _diagnose(path: str, rec: dict[str, Any]) -> None:
    from trainscope.rules.engine import diagnose_report

    t = time.perf_counter()
    report = diagnose_report(path)
    rec["diagnose_s"] = time.perf_counter() - t
    rec["findings"] = [{"name": f.name, "severity": f.severity.value, "message": f.message} for f in report.findings]
    rec["crashed_rules"] = [{"name": c.name, "error": c.error} for c in report.crashed]


def _child(kind: str, path: str, variant: str, out: str) -> None:
    """Runs inside the subprocess; writes one Record as JSON to `out`."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rec: dict[str, Any] = {"status": "ok", "error": "", "run_s": 0.0, "diagnose_s": 0.0}
    phase = "run"
    try:
        if kind == "program":
            import importlib.util
            import random

            import numpy as np
            import torch

            torch.set_num_threads(1)
            sys.path.insert(0, str(Path(path).resolve().parent))  # programs share programs/_data.py
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
            spec = importlib.util.spec_from_file_location(f"realbugs_{Path(path).stem}", path)
            mod = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            spec.loader.exec_module(mod)
            with tempfile.TemporaryDirectory(prefix="realbugs-") as root:
                run_dir = str(Path(root) / f"{Path(path).stem}-{variant}")
                t = time.perf_counter()
                mod.run(run_dir, variant == "fixed")
                rec["run_s"] = time.perf_counter() - t
                phase = "diagnose"
                _diagnose(run_dir, rec)
        else:
            phase = "diagnose"
            _diagnose(path, rec)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a record
        tb = traceback.extract_tb(e.__traceback__)
        rec["status"] = "trainscope-crash" if phase == "diagnose" or _in_trainscope(tb) else "program-error"
        rec["error"] = f"{phase}: {type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e))[-3000:]
    Path(out).write_text(json.dumps(rec), encoding="utf-8")


def run_case_variant(case: Case, variant: str, timeout: float = 180.0) -> Record:
    """One variant of one case in a fresh child process."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("MPLBACKEND", "Agg")
    with tempfile.TemporaryDirectory(prefix="realbugs-out-") as tmp:
        out = Path(tmp) / "record.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case.kind, case.path, variant, str(out)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Record(case.id, variant, "timeout", error=f"ran past {timeout:.0f} s",
                          wall_s=time.perf_counter() - t)
        wall = time.perf_counter() - t
        if not out.exists():  # the child died without writing (segfault, OOM, os._exit)
            return Record(case.id, variant, "trainscope-crash" if "trainscope" in proc.stderr else "program-error",
                          error=f"child exited {proc.returncode} without a record: {proc.stderr[-2000:]}", wall_s=wall)
        rec = json.loads(out.read_text(encoding="utf-8"))
    return Record(case.id, variant, rec["status"], rec.get("findings", []), rec.get("crashed_rules", []),
                  rec.get("error", ""), rec.get("run_s", 0.0), rec.get("diagnose_s", 0.0), wall)


def run_all(cases: list[Case], jobs: int = 1, timeout: float = 180.0, progress: Any = None) -> list[Record]:
    """Every variant of every case, `jobs` child processes at a time; records in case order."""
    work = [(c, v) for c in cases for v in c.variants]

    def one(item: tuple[Case, str]) -> Record:
        rec = run_case_variant(item[0], item[1], timeout)
        if progress is not None:
            progress(rec)
        return rec

    if jobs <= 1:
        return [one(w) for w in work]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, work))


def record_dict(rec: Record) -> dict[str, Any]:
    return asdict(rec)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
    else:
        sys.exit("harness.py is run by score.py (python benchmarks/realbugs/score.py --help)")
