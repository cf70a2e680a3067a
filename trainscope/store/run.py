"""`Run`: one training run as pandas frames, whatever it was read from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trainscope.store import schema


def empty_frame(table: str) -> pd.DataFrame:
    """An empty frame with the table's columns and dtypes."""
    cols = schema.COLUMNS[table]
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in cols.items()})


@dataclass
class Run:
    """Everything trainscope knows about a run.

    source: "trainscope" (recorded by the probe) or the importer's name ("csv", "jsonl",
    "tensorboard"); imported runs have only scalars.
    """

    path: Path
    meta: dict[str, Any]
    scalars: pd.DataFrame = field(default_factory=lambda: empty_frame(schema.SCALARS))
    layers: pd.DataFrame = field(default_factory=lambda: empty_frame(schema.LAYERS))
    init: pd.DataFrame = field(default_factory=lambda: empty_frame(schema.INIT))
    events: pd.DataFrame = field(default_factory=lambda: empty_frame(schema.EVENTS))
    source: str = "trainscope"

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def has_layers(self) -> bool:
        return not self.layers.empty

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    def scalar(self, name: str, rank: int | None = 0) -> pd.Series:
        """One scalar series indexed by step (rank 0 by default; None = all ranks, mean per step)."""
        df = self.scalars
        df = df[df["name"] == name]
        if rank is not None and "rank" in df and (df["rank"] == rank).any():
            df = df[df["rank"] == rank]
        s = df.groupby("step", sort=True)["value"].mean()
        s.name = name
        return s

    def scalar_names(self) -> list[str]:
        return sorted(self.scalars["name"].dropna().unique().tolist())

    def events_of(self, kind: str) -> pd.DataFrame:
        return self.events[self.events["kind"] == kind]
