"""Score trainscope on the realbugs benchmark: real public bug reports ported as tiny programs, plus loss logs.

    python benchmarks/realbugs/score.py [--split tune|holdout|all] [--jobs 2] [--json out.json]
                                        [--only CASE ...] [--timeout 180] [--quiet]

Per rule and overall: found / missed labels on buggy runs (a label is found when a finding of that rule
has severity warning or error), wrong (a warning or error on a buggy run naming a rule that is neither
in the case's labels nor in its also_ok), and false alarms (a warning or error on a fixed run, or on a
log labelled healthy), except rules in the case's `fixed_ok` (statements that are true of the fixed
program as well, such as no-validation on a program that logs no validation metric). Overall: recall, how many fixed programs got any warning, trainscope crashes,
and the wall time. See README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

WARN = ("warning", "error")


def warned(rec: harness.Record) -> set[str]:
    """Rules with a finding of severity warning or error in this record."""
    return {f["name"] for f in rec.findings if f["severity"] in WARN}


def score(cases: Iterable[harness.Case], records: Iterable[harness.Record]) -> dict[str, Any]:
    """The table: {rule: {found, missed, wrong, false_alarm}} plus the overall counts and per-case lines."""
    by_id = {c.id: c for c in cases}
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"found": 0, "missed": 0, "wrong": 0, "false_alarm": 0})
    per_case: list[dict[str, Any]] = []
    crashes: list[str] = []
    fixed_total = fixed_warned = fixed_allowed = healthy_logs = healthy_logs_warned = 0
    for rec in records:
        case = by_id[rec.case]
        got = warned(rec) if rec.status == "ok" else set()
        line: dict[str, Any] = {"case": case.id, "split": case.split, "kind": case.kind, "variant": rec.variant,
                                "status": rec.status, "labels": case.labels, "warnings": sorted(got)}
        if rec.status != "ok":
            crashes.append(f"{case.id} [{rec.variant}] {rec.status}: {rec.error.splitlines()[0] if rec.error else ''}")
        for c in rec.crashed_rules:
            crashes.append(f"{case.id} [{rec.variant}] rule {c['name']} crashed: {c['error']}")
        control = rec.variant == "fixed" or (rec.variant == "log" and not case.labels)
        if control:
            line["allowed"] = sorted(got & set(case.fixed_ok))
            got = got - set(case.fixed_ok)
            fixed_allowed += rec.variant == "fixed" and bool(line["allowed"]) and not got
            for r in got:
                table[r]["false_alarm"] += 1
            if rec.variant == "fixed":
                fixed_total += 1
                fixed_warned += bool(got)
            else:
                healthy_logs += 1
                healthy_logs_warned += bool(got)
            line["false_alarms"] = sorted(got)
        else:
            line["found"] = sorted(set(case.labels) & got)
            line["missed"] = sorted(set(case.labels) - got)
            line["wrong"] = sorted(got - set(case.labels) - set(case.also_ok) - set(case.fixed_ok))
            for r in case.labels:
                table[r]["found" if r in got else "missed"] += 1
            for r in line["wrong"]:
                table[r]["wrong"] += 1
        per_case.append(line)
    found = sum(t["found"] for t in table.values())
    missed = sum(t["missed"] for t in table.values())
    overall = {
        "cases": len(by_id),
        "programs": sum(c.kind == "program" for c in by_id.values()),
        "logs": sum(c.kind == "log" for c in by_id.values()),
        "found": found,
        "missed": missed,
        "recall": found / (found + missed) if found + missed else float("nan"),
        "wrong": sum(t["wrong"] for t in table.values()),
        "false_alarms": sum(t["false_alarm"] for t in table.values()),
        "fixed_programs": fixed_total,
        "fixed_with_warning": fixed_warned,
        "fixed_with_fixed_ok_warning": fixed_allowed,
        "healthy_logs": healthy_logs,
        "healthy_logs_with_warning": healthy_logs_warned,
        "crashes": crashes,
    }
    return {"table": {r: dict(v) for r, v in sorted(table.items())}, "overall": overall, "per_case": per_case}


def format_table(result: dict[str, Any]) -> str:
    rows = result["table"]
    w = max([len("rule")] + [len(r) for r in rows] + [len("total")])
    out = [f"| {'rule':{w}s} | found | missed | wrong | false alarms (fixed) |",
           f"| {'-' * w} | ----: | -----: | ----: | -------------------: |"]
    for r, c in rows.items():
        out.append(f"| {r:{w}s} | {c['found']:5d} | {c['missed']:6d} | {c['wrong']:5d} | {c['false_alarm']:20d} |")
    o = result["overall"]
    out.append(f"| {'total':{w}s} | {o['found']:5d} | {o['missed']:6d} | {o['wrong']:5d} | {o['false_alarms']:20d} |")
    return "\n".join(out)


def format_overall(result: dict[str, Any], wall_s: float | None = None) -> str:
    o = result["overall"]
    lines = [
        f"cases: {o['cases']} ({o['programs']} programs, {o['logs']} logs)",
        f"recall: {o['found']}/{o['found'] + o['missed']} = {o['recall']:.2f}",
        f"fixed programs with any warning: {o['fixed_with_warning']}/{o['fixed_programs']}"
        + (f" (plus {o['fixed_with_fixed_ok_warning']} with only warnings listed in fixed_ok)"
           if o["fixed_with_fixed_ok_warning"] else ""),
    ]
    if o["healthy_logs"]:
        lines.append(f"healthy logs with any warning: {o['healthy_logs_with_warning']}/{o['healthy_logs']}")
    lines.append(f"wrong warnings on buggy runs: {o['wrong']}")
    lines.append(f"trainscope crashes / failed runs: {len(o['crashes'])}")
    lines += [f"  {c}" for c in o["crashes"]]
    if wall_s is not None:
        lines.append(f"wall time: {wall_s:.0f} s")
    return "\n".join(lines)


def format_cases(result: dict[str, Any]) -> str:
    out = []
    for ln in result["per_case"]:
        head = f"{ln['case']:40s} {ln['split']:7s} {ln['variant']:5s} {ln['status']:16s}"
        if "found" in ln:
            out.append(f"{head} labels={ln['labels']} found={ln['found']} wrong={ln['wrong']}")
        else:
            allowed = f" (true of the program, not counted: {ln['allowed']})" if ln.get("allowed") else ""
            out.append(f"{head} warnings={ln['false_alarms']}{allowed}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=["tune", "holdout", "all"], default="all")
    ap.add_argument("--jobs", type=int, default=1, help="child processes at a time (default 1)")
    ap.add_argument("--json", metavar="OUT", help="write cases, records and the table as JSON")
    ap.add_argument("--only", nargs="+", metavar="CASE", help="only these case ids")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per run (default 180)")
    ap.add_argument("--quiet", action="store_true", help="no per-case lines")
    ap.add_argument("--records", metavar="JSON", help="re-score the records of an earlier --json run (runs nothing)")
    args = ap.parse_args(argv)

    cases = harness.select(harness.discover(), args.split, args.only)
    if not cases:
        print("no cases selected", file=sys.stderr)
        return 2
    t = time.perf_counter()

    def progress(rec: harness.Record) -> None:
        if not args.quiet:
            print(f"  ran {rec.case} [{rec.variant}] {rec.status} in {rec.wall_s:.1f} s", file=sys.stderr, flush=True)

    if args.records:
        wanted = {c.id for c in cases}
        saved = json.loads(Path(args.records).read_text(encoding="utf-8"))
        records = [harness.Record(**r) for r in saved["records"] if r["case"] in wanted]
        missing = wanted - {r.case for r in records}
        cases = [c for c in cases if c.id not in missing]
        if missing:
            print(f"not in {args.records} (left out): {sorted(missing)}", file=sys.stderr)
        wall = float(saved.get("wall_s", 0.0))
    else:
        records = harness.run_all(cases, jobs=args.jobs, timeout=args.timeout, progress=progress)
        wall = time.perf_counter() - t
    result = score(cases, records)
    print(f"split: {args.split}")
    if not args.quiet:
        print(format_cases(result))
        print()
    print(format_table(result))
    print()
    print(format_overall(result, wall))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "split": args.split, "wall_s": wall,
            "cases": [{**{k: getattr(c, k) for k in harness.CASE_KEYS + ("kind",)},
                       "split": c.split} for c in cases],
            "records": [harness.record_dict(r) for r in records],
            **result,
        }, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
