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
    """One measured win. backend: "tpu" or "gpu"; op: the jaxlm.ops name; dtype: input dtype
    name; lengths: [min, max] sequence length measured; head_dims: the head dims measured;
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


def rows_from_device_check(path: str | Path) -> list[Measured]:
    """Rows a device check's JSON (a list of {op, backend, device, dtype, shape: [batch,
    length, heads, head_dim], impl, passed, fwd_bwd_ms}) supports: for each (op, dtype,
    shape) where jaxlm's kernel passed and beat the XLA form. For review before committing."""
    results = json.loads(Path(path).read_text())
    rows = results["rows"] if isinstance(results, dict) else results
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["op"], row.get("backend", "gpu"), row["dtype"], tuple(row["shape"]))
        by_case.setdefault(key, {})[row["impl"]] = row
    found = []
    for (op, backend, dtype, shape), impls in sorted(by_case.items()):
        xla = impls.get("xla")
        kernel = next((r for impl, r in impls.items() if impl.startswith("jaxlm")
                       or impl in ("pallas", "mosaic_gpu")), None)
        if not (xla and kernel and kernel.get("passed")):
            continue
        if not (kernel.get("fwd_bwd_ms") and xla.get("fwd_bwd_ms")):
            continue
        speedup = xla["fwd_bwd_ms"] / kernel["fwd_bwd_ms"]
        if speedup > 1.0:
            found.append(Measured(backend, op, dtype, (shape[1], shape[1]), (shape[-1],),
                                  round(speedup, 2), kernel.get("device", "?"),
                                  kernel.get("date", "?")))
    return found
