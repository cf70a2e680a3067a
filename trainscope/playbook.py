"""Links from a rule's playbook reference ("7.8.1 Pattern 3") to its section of docs/playbook.md.

    section_anchor("7.8.1 Pattern 3")  -> "pattern-3"
    playbook_url("7.8.1 Pattern 3")    -> "file:///.../docs/playbook.md#pattern-3"

The first ';'-separated part of the reference that matches a known section decides; a reference that
matches none links to the top of the page. `TRAINSCOPE_PLAYBOOK_URL` overrides the base (e.g. a hosted
copy); otherwise the docs/playbook.md of the source tree, or the copy shipped in the wheel.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

TOP = "the-playbook"

# (pattern, anchor); `\1` in an anchor is the pattern's first group. Order matters: specific first.
SECTIONS: list[tuple[str, str]] = [
    (r"^7\.8\.1 Pattern (\d)", r"pattern-\1"),
    (r"^7\.8\.1", "loss-curve-patterns"),
    (r"^7\.8\.2|[Ll]earning [Rr]ate [Ff]inder|LR finder", "lr-finder"),
    (r"^7\.8\.3", "gradient-statistics"),
    (r"^7\.8\.4", "activation-distributions"),
    (r"^7\.8\.5|[Dd]ebugging [Cc]hecklist", "debugging-checklist"),
    (r"^7\.2", "initialization"),
    (r"^7\.3", "normalization"),
    (r"^7\.4\.2", "dropout"),
    (r"^7\.4\.3", "weight-decay"),
    (r"^7\.4\.4", "early-stopping"),
    (r"^7\.4", "regularization"),
    (r"^7\.5", "schedules"),
    (r"^7\.6", "gradient-clipping"),
    (r"^7\.7", "mixed-precision"),
    (r"[Dd]ocument classifier case study \(bug (\d)", r"docclf-bug-\1"),
    (r"[Dd]ocument classifier", "case-docclf"),
    (r"^7\.9|StreamRec", "case-streamrec"),
    (r"[Tt]rustworthy skeleton|^003 .*(initial loss|baseline|overfit)", "trustworthy-skeleton"),
    (r"[Tt]raining is slow|[Pp]erformance|^003 .*(slow|throughput|GPU)", "training-is-slow"),
    (r"[Tt]roubleshooting map", "troubleshooting-map"),
    (r"[Ee]xperiment tracking", "experiment-tracking"),
    (r"^004 .*([Dd]ropout mistake|[Cc]ommon [Dd]ropout)", "dropout"),
    (r"^004 .*[Cc]ommon mistake|[Cc]ommon mistake", "common-mistakes"),
    (r"^004 .*(BatchNorm|LayerNorm|[Nn]ormalization|Batch Size)", "normalization"),
    (r"^004 .*[Dd]ropout", "dropout"),
    (r"^004 .*[Cc]lipping", "gradient-clipping"),
    (r"^004 .*[Ee]arly [Ss]topping", "early-stopping"),
    (r"^003", "trustworthy-skeleton"),
]


def section_anchor(reference: str | None) -> str:
    """The docs/playbook.md anchor for a rule reference; TOP when nothing matches."""
    for part in (reference or "").split(";"):
        part = part.strip()
        for pattern, anchor in SECTIONS:
            m = re.search(pattern, part)
            if m:
                return m.expand(anchor)
    return TOP


def playbook_path() -> Path | None:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "docs" / "playbook.md", here / "_docs" / "playbook.md"):
        if candidate.is_file():
            return candidate
    return None


def playbook_base() -> str:
    env = os.environ.get("TRAINSCOPE_PLAYBOOK_URL")
    if env:
        return env
    path = playbook_path()
    return path.as_uri() if path is not None else "https://pypi.org/project/trainscope/"


def playbook_url(reference: str | None) -> str:
    return f"{playbook_base()}#{section_anchor(reference)}"


def anchors(text: str) -> set[str]:
    """The anchors a playbook.md text defines: explicit <a id=...> and headings (GitHub-style slugs)."""
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
