"""The committed device measurements that earn jaxlm's own kernels a place in ``impl="auto"``.

``impl="auto"`` runs a jaxlm Pallas kernel only for a (backend, op, dtype, shape range) that a
row of :data:`MEASURED` covers: a row records that the kernel passed the device check
(values and gradients against the XLA form, ``experiments/device_check.py``) and was faster
than the XLA form there, by how much, on which device and when. Everything else runs the XLA
form. A row is added by hand from a device check's ``results/device_check.json``
(:func:`rows_from_device_check` proposes them); none is guessed.

No kernel has such a row yet: the TPU kernels have not run on a TPU, and no device check has
timed a kernel on a GPU, so ``auto`` picks the XLA forms for every recurrent op.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Measured:
    """One measured win. backend: "tpu" or "gpu"; op: the jaxlm.ops name (with
    "/per_channel" for gated linear attention with one gate per channel, a kernel of its own);
    dtype: input dtype name; lengths: [min, max] sequence length measured; head_dims: the
    head dims measured (d_state for ``selective_scan``);
    speedup: XLA time / kernel time (forward + backward); device, date, source: where it
    comes from."""

    backend: str
    op: str
    dtype: str
    lengths: tuple[int, int]
    head_dims: tuple[int, ...]
    speedup: float
    device: str
    date: str
    source: str = "experiments/device_check.py"


MEASURED: tuple[Measured, ...] = ()


def kernel_wins(op: str, backend: str, dtype, length: int, head_dim: int,
                table: tuple[Measured, ...] | None = None) -> bool:
    """Whether a committed measurement covers running jaxlm's kernel for ``op`` on
    ``backend`` at this dtype, length and head dim (and found it faster than the XLA form)."""
    import numpy as np

    name = np.dtype(dtype).name
    backend = "gpu" if backend in ("cuda", "rocm") else backend
    return any(row.backend == backend and row.op == op and row.dtype == name
               and row.lengths[0] <= length <= row.lengths[1] and head_dim in row.head_dims
               and row.speedup > 1.0 for row in (MEASURED if table is None else table))


# experiments/device_check.py's op names -> the jaxlm.ops function each measures
DEVICE_CHECK_OPS = {"gla per head (ssd)": "gated_linear_attention",
                    "gla per channel": "gated_linear_attention/per_channel",
                    "gated delta rule": "gated_delta_rule", "attention causal": "attention",
                    "selective scan": "selective_scan"}
# the head dim a row is keyed by, where it is not the shape's d: the scan's d_state
DEVICE_CHECK_HEAD_DIM = {"selective scan": 16}
KERNEL_IMPLS = ("jaxlm pallas", "jaxlm mosaic_gpu")


def rows_from_device_check(path: str | Path) -> list[Measured]:
    """Rows a device check's ``results/device_check.json`` supports: for each (op, dtype,
    shape) where one of jaxlm's kernels passed (agrees with the XLA form) and its forward +
    backward beat the XLA form's, the fastest such kernel. For review before committing."""
    report = json.loads(Path(path).read_text())
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in report["rows"]:
        if row.get("op") in DEVICE_CHECK_OPS and isinstance(row.get("shape"), str):
            key = (row["op"], row["backend"], row["dtype"], row["shape"])
            by_case.setdefault(key, {})[row["impl"]] = row
    found = []
    for (op, backend, dtype, shape), impls in sorted(by_case.items()):
        xla_ms = impls.get("jaxlm xla", {}).get("fwd_bwd_ms")
        wins = [(r["fwd_bwd_ms"], r) for name, r in impls.items() if name in KERNEL_IMPLS
                and r.get("passed") and r.get("fwd_bwd_ms")]
        if not (xla_ms and wins):
            continue
        kernel_ms, kernel = min(wins, key=lambda w: w[0])
        if kernel_ms < xla_ms:
            dims = dict((part[0], int(part[1:])) for part in shape.split())  # "b4 h16 l4096 d128"
            head_dim = DEVICE_CHECK_HEAD_DIM.get(op, dims["d"])
            found.append(Measured(backend, DEVICE_CHECK_OPS[op], dtype, (dims["l"], dims["l"]),
                                  (head_dim,), round(xla_ms / kernel_ms, 2),
                                  kernel.get("device", "?"), report.get("date", "?"),
                                  f"experiments/device_check.py ({kernel['impl']})"))
    return found
