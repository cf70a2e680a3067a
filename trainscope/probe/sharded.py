"""Sharded parameters (FSDP2 `fully_shard`, DTensor): what each rank records, and how it adds up.

A rank holds only its local shard of a DTensor parameter and of its gradient. The probe takes every
statistic of such a layer on the local shard (`local()`), so a rank's layer rows describe its shard
(their `numel` is the shard's); meta.json `sharding` names the sharded layers and in how many ranks
each element lives (`replicas`: 1 for plain FSDP, the replicate-dimension size for HSDP).
`store/shards.py` merges the ranks' rows at load time into full-tensor statistics: norms from summed
squares, means/stds from the moments, max |x| from the maxima, zero fractions and counts from the
counts. The global `grad_norm` a rank writes is its partial norm: sqrt(sum of its shards' squares,
plus 1/replicas of the squares of replicated tensors), so sqrt(sum over ranks of grad_norm^2) is the
full model's norm.

Why merge at load time and not with a collective inside the probe: a collective in a training hook
must be called by every rank in the same order, and a hook that fails on one rank is disabled there
(guard.py) while the other ranks go on calling it; they would wait forever (under NCCL the watchdog
kills the job). Load-time merging needs no communication and cannot hang; the price is that checks
made inside the probe (live findings) see a rank's own shard.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

try:  # torch >= 2.4
    from torch.distributed.tensor import DTensor, Partial, Replicate
except ImportError:  # pragma: no cover - an old torch or a build without torch.distributed
    DTensor = Partial = Replicate = None  # type: ignore[assignment,misc]


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The rank's own part of a DTensor (no copy: optimizer updates show through), else `t`."""
    if DTensor is None or not isinstance(t, DTensor):
        return t
    with torch.no_grad():  # a view outside autograd: the probe only reads it
        return t.to_local()


def replicas(t: Tensor, world_size: int) -> int:
    """On how many ranks each element of `t` lives: the mesh sizes of the dims it is replicated on
    (1 for a tensor sharded on a 1-D mesh); a plain tensor in a sharded run lives on every rank."""
    if not is_dtensor(t):
        return max(1, int(world_size))
    mesh, n = t.device_mesh, 1
    for d, placement in enumerate(t.placements):
        if isinstance(placement, (Replicate, Partial)):
            n *= mesh.size(d)
    return n


def replicated_value(t: Any) -> Any:
    """A 0-d DTensor result (clip_grad_norm_'s total norm): its value when every rank holds all of it
    (Replicate), None when it is a partial sum (reading it would need a collective)."""
    if not is_dtensor(t):
        return t
    if all(isinstance(p, Replicate) for p in t.placements):
        with torch.no_grad():
            return t.to_local()
    return None


def describe(layers: Sequence[tuple[str, Any, str, list[Tensor]]], world_size: int) -> dict[str, Any] | None:
    """meta.json `sharding` for the probe's layers, or None when no parameter is a DTensor."""
    sharded = {name: replicas(ps[0], world_size) for name, _, _, ps in layers if ps and is_dtensor(ps[0])}
    if not sharded:
        return None
    plain = [name for name, _, _, ps in layers if ps and not is_dtensor(ps[0])]
    return {
        "kind": "dtensor",
        "world_size": int(world_size),
        "layers": sharded,  # layer -> replicas; its rows hold local-shard statistics
        "replicated_layers": plain,  # plain tensors: the same on every rank, rows not merged
        "grad_norm": "partial",  # each rank's grad_norm / grad_norm_clipped is its share (see above)
        "merged_at_load": True,
        "local_only": ["init table (weights of the rank's shard)", "parameter_status (the rank's shards)",
                       "live findings"],
    }


def norm_weights(params: Sequence[Tensor], world_size: int) -> list[float] | None:
    """Per tensor, the weight of its squared local norm in the rank's partial global norm (1/replicas);
    None when every weight is 1 (plain FSDP: the norms need no weighting)."""
    w = [1.0 / replicas(p, world_size) for p in params]
    return None if all(x == 1.0 for x in w) else w


def partial_of_replicated(value: Tensor, n_replicas: int) -> Tensor:
    """A norm every rank knows in full, written as the rank's share: summing squares over ranks gives it back."""
    return value / math.sqrt(n_replicas) if n_replicas > 1 else value
