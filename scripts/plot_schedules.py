"""Draw every learning-rate schedule of trainscope.train as a self-contained SVG (no matplotlib
needed) and print the numeric table used in docs/trainer.md.

    python scripts/plot_schedules.py      # writes docs/img/schedules.svg
"""
from __future__ import annotations

import sys
from pathlib import Path

from trainscope.train.schedules import ScheduleSpec, trace

ROOT = Path(__file__).resolve().parents[1]
TOTAL, PER_EPOCH, LR = 1000, 100, 0.1

SCHEDULES = [
    ("step (x0.1 every 3 epochs)", ScheduleSpec("step", step_epochs=3, gamma=0.1), "sgd"),
    ("cosine", ScheduleSpec("cosine"), "sgd"),
    ("linear warmup (5%) + cosine", ScheduleSpec("warmup_cosine", warmup_frac=0.05), "sgd"),
    ("one-cycle (lr; momentum dashed)", ScheduleSpec("onecycle", max_lr=LR), "sgd"),
    ("cosine with warm restarts (T0=1 epoch, x2)", ScheduleSpec("cosine_restarts", restart_epochs=1, t_mult=2), "sgd"),
]


def _panel(x0: float, y0: float, w: float, h: float, title: str, lrs: list[float], moms: list[float] | None) -> str:
    def path(values: list[float], lo: float, hi: float) -> str:
        pts = []
        keep = sorted(set(range(0, len(values), 4)) | {len(values) - 1})  # 250 points are plenty
        for i, v in ((i, values[i]) for i in keep):
            px = x0 + w * i / (len(values) - 1)
            py = y0 + h - h * (v - lo) / (hi - lo or 1)
            pts.append(f"{px:.1f},{py:.1f}")
        return "M" + " L".join(pts)

    parts = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{x0}" y="{y0 - 8}" font-size="13" font-weight="600">{title}</text>',
             f'<path d="{path(lrs, 0, LR)}" fill="none" stroke="#1f6feb" stroke-width="2"/>',
             f'<text x="{x0 - 6}" y="{y0 + 4}" font-size="10" text-anchor="end">{LR:g}</text>',
             f'<text x="{x0 - 6}" y="{y0 + h}" font-size="10" text-anchor="end">0</text>',
             f'<text x="{x0 + w}" y="{y0 + h + 14}" font-size="10" text-anchor="end">step {TOTAL}</text>']
    if moms is not None:
        parts.append(f'<path d="{path(moms, 0.8, 1.0)}" fill="none" stroke="#d1242f" stroke-width="1.5" '
                     f'stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{x0 + w + 6}" y="{y0 + 4}" font-size="10" fill="#d1242f">β1/momentum 0.8-1.0</text>')
    return "\n".join(parts)


def main() -> int:
    w, h, gap_x, gap_y, left, top = 330, 150, 150, 60, 50, 40
    panels, table = [], []
    for i, (title, spec, opt) in enumerate(SCHEDULES):
        t = trace(spec, TOTAL, PER_EPOCH, lr=LR, optimizer=opt)
        col, row = i % 2, i // 2
        moms = t["momentum"] if spec.name == "onecycle" else None
        panels.append(_panel(left + col * (w + gap_x), top + row * (h + gap_y), w, h, title, t["lr"], moms))
        table.append((title, [t["lr"][min(TOTAL - 1, s)] for s in range(0, TOTAL + 1, 100)]))
    height = top + 3 * (h + gap_y)
    width = left + 2 * (w + gap_x)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="system-ui, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
           + "\n".join(panels) + "\n</svg>\n")
    out = ROOT / "docs" / "img" / "schedules.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg, encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    print("| schedule | " + " | ".join(f"{s}" for s in range(0, TOTAL + 1, 100)) + " |")
    print("|---|" + "---:|" * 11)
    for title, values in table:
        print(f"| {title} | " + " | ".join(f"{v:.2g}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
