"""`Run`: one training run as pandas frames, whatever it was read from."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
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
        cache = self.__dict__.get("_scalar_cache")
        if cache is not None:  # inside `cached_scalars`: each series computed once per frame
            hit = cache.get(("scalar", name, rank))
            if hit is None or hit[0] is not self.scalars:
                hit = cache[("scalar", name, rank)] = (self.scalars, self._scalar(name, rank))
            # a deep copy: without pandas' copy-on-write (pandas < 3) a shallow one would share the
            # values, and a rule writing into its series would change what the next rule reads
            return hit[1].copy(deep=True)
        return self._scalar(name, rank)

    def _scalar(self, name: str, rank: int | None) -> pd.Series:
        df = self.scalars
        df = df[df["name"] == name]
        if rank is not None and "rank" in df and (df["rank"] == rank).any():
            df = df[df["rank"] == rank]
        s = df.groupby("step", sort=True)["value"].mean()
        s.name = name
        return s

    def scalar_names(self) -> list[str]:
        cache = self.__dict__.get("_scalar_cache")
        if cache is not None:
            hit = cache.get(("names",))
            if hit is None or hit[0] is not self.scalars:
                hit = cache[("names",)] = (self.scalars, sorted(self.scalars["name"].dropna().unique().tolist()))
            return list(hit[1])
        return sorted(self.scalars["name"].dropna().unique().tolist())

    @contextmanager
    def cached_scalars(self) -> Iterator["Run"]:
        """Within the block, `scalar` and `scalar_names` compute each answer once (while
        `run.scalars` is the same frame; the rules ask for the same series dozens of times, each a
        mask and a groupby over every scalar row). Outside it they read the frame every time, so a
        frame changed in place reads fresh."""
        if "_scalar_cache" in self.__dict__:  # nested: the outer block owns the cache
            yield self
            return
        self.__dict__["_scalar_cache"] = {}
        try:
            yield self
        finally:
            self.__dict__.pop("_scalar_cache", None)

    def codes(self, table: str, column: str) -> tuple[np.ndarray, pd.Index]:
        """`pd.factorize(getattr(run, table)[column])`: integer codes (first appearance order, -1
        where missing) and the distinct values, computed once while the column holds the same data.
        The codes' dtype is the smallest signed integer that holds them (pd.factorize's int64 for
        what the reader did not hand over). The reader hands over the codes of the string columns
        it decoded from Parquet dictionaries (a 10M-row column: no hashing of 10M strings).
        Callers only read the result."""
        key = (table, column)
        data = self._column_data(table, column)
        cache = self.__dict__.setdefault("_codes_cache", {})
        hit = cache.get(key)
        if hit is None or hit[0]() is not data:
            hit = cache[key] = (weakref.ref(data), pd.factorize(getattr(self, table)[column]))
        return hit[1]

    def _column_data(self, table: str, column: str) -> Any:
        """What a column's values live in: an Arrow string column's ChunkedArray (immutable, replaced
        on any change), else the column's array."""
        arr = getattr(self, table)[column].array
        return getattr(arr, "_pa_array", arr)

    def _give_codes(self, table: str, column: str, codes: np.ndarray, uniques: pd.Index) -> None:
        """The reader's codes of a column it built (see `codes`); held while the column's data lives."""
        data = weakref.ref(self._column_data(table, column))
        self.__dict__.setdefault("_codes_cache", {})[(table, column)] = (data, (codes, uniques))

    def events_of(self, kind: str) -> pd.DataFrame:
        return self.events[self.events["kind"] == kind]
