"""What differs between runs' configurations: the "what changed?" beside `trainscope compare`'s table.

Each run's meta.json is flattened into dotted keys, grouped by section:
  optimizer   class and each param group's hyperparameters (lr, weight_decay, betas, momentum, ...)
  schedule    the scheduler's class and parameters
  criterion   the loss and its parameters
  model       class, parameter counts, and the layer list (name: type, parameter count) in forward order
  config      the config dict given to watch(config=...) (the reference trainer's experiment/trainer/schedule)
  data        the data fingerprint (shapes, dtypes, hash of the first batches)
  code        git commit, branch, dirty flag of the training script's repository
  env         torch, CUDA, cuDNN, devices, world size, host
  seeds       torch.initial_seed() and the determinism flags
  notes       watch(..., notes=...)
Only keys whose values differ between the runs are shown (a key missing from a run shows as "-").
"""
from __future__ import annotations

import json
from typing import Any

SECTIONS = ("optimizer", "schedule", "criterion", "model", "config", "data", "code", "env", "seeds", "notes",
            "probe")
MISSING = "-"


def _fmt(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str, bool)) or x is None for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _flatten(prefix: str, obj: Any, out: dict[str, str], depth: int = 0) -> None:
    if isinstance(obj, dict) and depth < 6:
        if not obj:
            out[prefix] = "{}"
        for k in sorted(obj):
            _flatten(f"{prefix}.{k}" if prefix else str(k), obj[k], out, depth + 1)
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj) and depth < 6:
        for i, x in enumerate(obj):
            _flatten(f"{prefix}[{i}]", x, out, depth + 1)
    else:
        out[prefix] = _fmt(obj)


def flatten_config(meta: dict[str, Any]) -> dict[str, str]:
    """A run's configuration as {section.key: value string}."""
    out: dict[str, str] = {}
    opt = meta.get("optimizer")
    if opt:
        out["optimizer.class"] = str(opt.get("class"))
        scheduled = bool(meta.get("scheduler"))
        for i, g in enumerate(opt.get("param_groups") or []):
            g = dict(g)
            if scheduled:  # the summary is the optimizer's state when meta.json was last written
                for k in ("lr", "betas", "momentum"):
                    if k in g:
                        g[f"{k} (at end)"] = g.pop(k)
            _flatten(f"optimizer.param_groups[{i}]", g, out)
    sch = meta.get("scheduler")
    if sch:
        out["schedule.class"] = str(sch.get("class"))
        _flatten("schedule.params", sch.get("params") or {}, out)
    crit = meta.get("criterion")
    if crit:
        out["criterion.class"] = str(crit.get("class"))
        _flatten("criterion.params", crit.get("params") or {}, out)
    model = meta.get("model")
    if model:
        for k in ("class", "n_params", "n_trainable"):
            if k in model:
                out[f"model.{k}"] = _fmt(model[k])
        mods = model.get("modules") or []
        out["model.layers"] = str(len(mods))
        counts: dict[str, int] = {}
        for m in mods:
            counts[str(m.get("type"))] = counts.get(str(m.get("type")), 0) + 1
        for t, n in counts.items():  # which layer types were added or removed, and how many
            out[f"model.layers.{t}"] = str(n)
        seq = " ".join(str(m.get("type")) for m in mods)
        out["model.sequence"] = seq
    _flatten("config", meta.get("config") or {}, out)
    tracking = meta.get("tracking") or {}
    if tracking.get("data"):
        _flatten("data", tracking["data"], out)
    git = tracking.get("git") or {}
    for k in ("commit", "branch", "dirty", "root", "script"):
        if k in git:
            out[f"code.{k}"] = _fmt(git[k])
    env = dict(tracking.get("env") or {})
    if not env:
        env = {"torch": meta.get("torch_version"), "python": meta.get("python_version")}
    env["host"] = meta.get("host")
    env.setdefault("world_size", meta.get("world_size"))
    _flatten("env", {k: v for k, v in env.items() if v is not None}, out)
    for name, p in ((tracking.get("modules") or {}).get("dropout") or {}).items():
        out[f"model.dropout.{name}"] = _fmt(p)
    if tracking.get("seeds"):
        _flatten("seeds", tracking["seeds"], out)
    if meta.get("notes"):
        out["notes"] = str(meta["notes"])
    for k in ("every", "compiled", "trainscope_version"):
        if k in meta:
            out[f"probe.{k}"] = _fmt(meta[k])
    return out


def config_diff(metas: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[str]], int]:
    """(keys that differ, in section order; {key: value per run}; how many keys are equal in all runs)."""
    flat = [flatten_config(m or {}) for m in metas]
    keys: list[str] = []
    seen: set[str] = set()
    for f in flat:
        for k in f:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    rank = {s: i for i, s in enumerate(SECTIONS)}
    keys.sort(key=lambda k: (rank.get(k.split(".")[0].split("[")[0], len(SECTIONS)), k))
    values = {k: [f.get(k, MISSING) for f in flat] for k in keys}
    differ = [k for k in keys if len(set(values[k])) > 1]
    return differ, {k: values[k] for k in differ}, len(keys) - len(differ)


def _short(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def format_diff(names: list[str], metas: list[dict[str, Any]], markdown: bool = False, width: int = 40,
                limit: int = 60) -> str:
    """The differing keys as a text (or Markdown) table; at most `limit` rows (the rest counted)."""
    differ, values, same = config_diff(metas)
    if len(metas) < 2:
        return ""
    title = (f"Configuration differences: {len(differ)} setting(s) differ, {same} are the same"
             if differ else f"Configuration: all {same} recorded settings are the same")
    if not differ:
        return title
    rows = [[k] + [_short(v, width) for v in values[k]] for k in differ[:limit]]
    head = ["setting"] + names
    if markdown:
        out = [title, "", "| " + " | ".join(head) + " |", "|" + "|".join(":--" for _ in head) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if len(differ) > limit:
        out.append(f"... and {len(differ) - limit} more")
    return "\n".join(out)
