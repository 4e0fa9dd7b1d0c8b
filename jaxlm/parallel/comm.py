"""Communication volume of a compiled program, read from its HLO: the bytes each collective
produces per device, by kind."""

from __future__ import annotations

import re

import numpy as np

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"=\s*(\(.*?\)|\S+)\s+(" + "|".join(KINDS) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def _bytes(dtype: str, dims: str) -> int:
    size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    width = 1 if dtype == "pred" else int(re.sub(r"\D", "", dtype)) // 8
    return size * width


def _moves_nothing(line: str) -> bool:
    """True when every replica group of the op has one device (e.g. a psum over a size-1 mesh
    axis): no bytes leave the device."""
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if iota:
        return int(iota.group(2)) == 1
    listed = re.search(r"replica_groups=\{(\{[\d,{}]*\})\}", line)
    return bool(listed) and all("," not in group for group in re.findall(r"\{([\d,]*)\}",
                                                                          listed.group(1)))


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of the results of every collective in ``hlo_text`` (``compiled.as_text()``), per
    device and per kind. An async ``-start`` op counts its last tuple element (the result);
    ops whose replica groups are single devices move nothing and are skipped; collectives
    inside loops count once per appearance, so unroll loops to count them all."""
    totals = dict.fromkeys(KINDS, 0)
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match is None or _moves_nothing(line):
            continue
        shapes = _SHAPE.findall(match.group(1))
        if match.group(3):
            shapes = shapes[-1:]
        totals[match.group(2)] += sum(_bytes(dtype, dims) for dtype, dims in shapes)
    return totals
