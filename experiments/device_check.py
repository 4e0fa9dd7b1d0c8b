"""One command for a GPU machine: the GPU kernel tests, then one table of every implementation
of each op side by side, written to results/device_check.{md,json}.

Run:  python experiments/device_check.py            (one H100/H200, JAX installed; <= 8 min)
      python experiments/device_check.py --dry-run  (any host: tiny shapes, Mosaic GPU kernels
                                                     interpreted, every code path once)

(a) ``pytest -m gpu tests/kernels`` (the kernels compiled for the GPU, values and gradients
against the XLA forms), its summary line in the report. (b) op x shape x implementation:
forward and forward+backward milliseconds (median of timed calls after a warm-up, each
synchronised), achieved TFLOP/s and GB/s (the algorithm's matrix-product FLOPs; the bytes of
inputs read and outputs written once) and the larger of their fractions of the device's peak,
and ``passed``: the output agrees with jaxlm's XLA form (relative error below 2e-2 in
bfloat16). Implementations: jaxlm's Mosaic GPU kernels, its portable Pallas kernels (where
this JAX lowers them for the backend), its XLA forms, JAX's own attention
(``jax.nn.dot_product_attention``, cuDNN and XLA), and the peers when they import:
flash-linear-attention's Triton ops through torch (``fla``) and jax-linear-attention. A peer
that does not import is reported absent; one that imports but whose entry points this script
does not know is reported so, never timed on a guess. Each measurement runs under a guard
(exceptions become the row's error) and the whole table under a time budget (rows past it are
marked skipped).

Shapes: bfloat16, batch 4, 16 heads, head dim 128, lengths 4096 and 16384; the selective
scan at batch 4, d_inner 16 x 128 = 2048, d_state 16, the same lengths. Attention also runs
on rows packed with 16 documents (segment ids), where the kernels skip the block pairs of two
documents.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package, when run from a bare checkout

from jaxlm.ops import (attention, block_sparse_attention, gated_delta_rule,  # noqa: E402
                       gated_linear_attention, selective_scan)

# Dense bf16 matrix-unit FLOP/s and memory bandwidth (bytes/s), vendors' data sheets.
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
TOL = 2e-2
CHUNK = 64


def peak_for(kind: str):
    return next((v for k, v in PEAKS.items() if k.lower() in kind.lower()), None)


def rel_err(a, b) -> float:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def time_ms(fn, args, repeats: int) -> float:
    """Median milliseconds of ``fn(*args)`` after a warm-up call (``fn`` compiled already)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def grad_of(fn, n_diff):
    """forward + backward: the gradients of sum(out) w.r.t. the first ``n_diff`` arguments."""
    def loss(*args):
        out = fn(*args)
        out = out[0] if isinstance(out, tuple) else out
        return jnp.sum(out.astype(jnp.float32))

    return jax.grad(loss, argnums=tuple(range(n_diff)))


# ---------------------------------------------------------------------------------------------
# jaxlm's implementations. Each op: make(key, shape) -> args (heads-last, as the ops take them),
# impls {name: fn(*args) -> out}, the reference impl name, n_diff, FLOPs and bytes of a forward.


def split_pieces(programs, length):
    """The pieces the split rows are timed at: what jaxlm.kernels.split picks for this device,
    at least 2 (so the split path is measured even where the default would not split)."""
    from jaxlm.kernels import split

    return max(2, split.pieces_for(programs, length, CHUNK))


def gla_case(batch, heads, length, dim, dtype, *, interpret, per_channel=False):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(keys[i], (batch, length, heads, dim), dtype) for i in range(3))
    gates = (batch, length, heads) + ((dim,) if per_channel else ())
    log_g = -jax.nn.softplus(jax.random.normal(keys[3], gates, jnp.float32))
    scale = dim ** -0.5

    def mosaic(q, k, v, log_g, pieces=1):
        from jaxlm.kernels import split
        from jaxlm.kernels.mosaic_gpu import gla_per_channel, linear_attention

        kern = (gla_per_channel if per_channel else linear_attention).gated_linear_attention
        run = functools.partial(kern, interpret=interpret)
        t = lambda x: jnp.moveaxis(x, 2, 1)
        g = t(log_g) if per_channel else t(log_g)[..., None]
        out, _ = split.gated_linear_attention(
            run, t(q * jnp.asarray(scale, q.dtype)), t(k), t(v), g,
            jnp.zeros((batch, length), bool), jnp.zeros((batch, heads, dim, dim), jnp.float32),
            pieces=pieces, chunk=CHUNK)
        return t(out)

    pieces = split_pieces(batch * heads, length)
    impls = {"jaxlm mosaic_gpu": mosaic,
             f"jaxlm mosaic_gpu, rows in {pieces} pieces": functools.partial(mosaic,
                                                                             pieces=pieces),
             "jaxlm pallas": lambda *a: gated_linear_attention(
                 *a, impl="pallas_interpret" if interpret else "pallas"),
             "jaxlm xla": lambda *a: gated_linear_attention(*a, impl="xla")}
    flops = 2 * batch * heads * length * (CHUNK * 2 * dim + 2 * dim * dim)
    nbytes = 4 * batch * heads * length * dim * jnp.dtype(dtype).itemsize
    return (q, k, v, log_g), impls, 4, flops, nbytes


def delta_case(batch, heads, length, dim, dtype, *, interpret):
    keys = jax.random.split(jax.random.key(1), 5)
    q, k, v = (jax.random.normal(keys[i], (batch, length, heads, dim), dtype) for i in range(3))
    k = (k / jnp.linalg.norm(k.astype(jnp.float32), axis=-1, keepdims=True)).astype(dtype)
    beta = jax.nn.sigmoid(jax.random.normal(keys[3], (batch, length, heads), jnp.float32))
    log_a = -jax.nn.softplus(jax.random.normal(keys[4], (batch, length, heads), jnp.float32))
    scale = dim ** -0.5

    def mosaic(q, k, v, beta, log_a, pieces=1):
        from jaxlm.kernels import split
        from jaxlm.kernels.mosaic_gpu.delta_rule import gated_delta_rule as kern

        t = lambda x: jnp.moveaxis(x, 2, 1)
        out, _ = split.affine_recurrence(
            functools.partial(kern, interpret=interpret), t(q * jnp.asarray(scale, q.dtype)),
            t(k), t(v), (t(beta), t(log_a)), jnp.zeros((batch, length), bool),
            jnp.zeros((batch, heads, dim, dim), jnp.float32), pieces=pieces, chunk=CHUNK)
        return t(out)

    pieces = split_pieces(batch * heads * (dim // 64), length)
    impls = {"jaxlm mosaic_gpu": mosaic,
             f"jaxlm mosaic_gpu, rows in {pieces} pieces": functools.partial(mosaic,
                                                                             pieces=pieces),
             "jaxlm pallas": lambda *a: gated_delta_rule(
                 *a, impl="pallas_interpret" if interpret else "pallas"),
             "jaxlm xla": lambda *a: gated_delta_rule(*a, impl="xla")}
    flops = 2 * batch * heads * length * (CHUNK * 4 * dim + 4 * dim * dim)
    nbytes = 4 * batch * heads * length * dim * jnp.dtype(dtype).itemsize
    return (q, k, v, beta, log_a), impls, 5, flops, nbytes


def attention_case(batch, heads, length, dim, dtype, *, interpret):
    keys = jax.random.split(jax.random.key(2), 3)
    q, k, v = (jax.random.normal(keys[i], (batch, length, heads, dim), dtype) for i in range(3))
    impls = {"jaxlm pallas": lambda *a: attention(
                 *a, impl="pallas_interpret" if interpret else "pallas"),
             "jaxlm xla": lambda *a: attention(*a, impl="xla"),
             "jax.nn xla": lambda *a: jax.nn.dot_product_attention(
                 *a, is_causal=True, implementation="xla"),
             "jax.nn cudnn": lambda *a: jax.nn.dot_product_attention(
                 *a, is_causal=True, implementation="cudnn")}
    flops = 2 * batch * heads * length * length * dim  # causal: half of 4·L²·d
    nbytes = 4 * batch * heads * length * dim * jnp.dtype(dtype).itemsize
    return (q, k, v), impls, 3, flops, nbytes


def packed_attention_case(batch, heads, length, dim, dtype, *, interpret):
    """Causal attention over rows packed with 16 documents of length / 16 (segment ids):
    jaxlm's kernels skip the block pairs of two documents, the XLA form masks them. The
    FLOPs count only the pairs within a document."""
    keys = jax.random.split(jax.random.key(5), 3)
    q, k, v = (jax.random.normal(keys[i], (batch, length, heads, dim), dtype) for i in range(3))
    docs = 16
    seg = jnp.broadcast_to(jnp.arange(length) * docs // length, (batch, length))
    run = lambda impl: lambda *a: attention(*a, segment_ids=seg, impl=impl)
    impls = {"jaxlm pallas": run("pallas_interpret" if interpret else "pallas"),
             "jaxlm xla": run("xla")}
    flops = 2 * batch * heads * length * length * dim // docs
    nbytes = 4 * batch * heads * length * dim * jnp.dtype(dtype).itemsize
    return (q, k, v), impls, 3, flops, nbytes


def block_sparse_case(batch, heads, length, dim, dtype, *, interpret):
    """Non-causal attention over blocks of 64 with half the key blocks of every query block
    masked (a checkerboard): jaxlm's kernel (the Mosaic GPU forward on Hopper) against the
    XLA form gathering the allowed blocks."""
    keys = jax.random.split(jax.random.key(4), 3)
    q, k, v = (jax.random.normal(keys[i], (batch, length, heads, dim), dtype) for i in range(3))
    n = -(-length // CHUNK)
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    mask = ((i + j) % 2 == 0)[None, None]
    run = lambda impl, **kw: lambda *a: block_sparse_attention(
        *a, mask, block_size=CHUNK, causal=False, impl=impl, **kw)
    def mosaic(q, k, v):  # the kernel itself (interpreted in a dry run on CPU)
        from jaxlm.kernels.mosaic_gpu.flash_attention import flash_attention as kern

        return kern(q, k, v, causal=False, block_mask=mask, interpret=interpret)

    impls = {"jaxlm mosaic_gpu": mosaic,
             "jaxlm pallas": run("pallas_interpret" if interpret else "pallas"),
             "jaxlm xla": run("xla", max_blocks=-(-n // 2))}
    flops = 2 * batch * heads * length * length * dim  # half of 4·L²·d
    nbytes = 4 * batch * heads * length * dim * jnp.dtype(dtype).itemsize
    return (q, k, v), impls, 3, flops, nbytes


def scan_case(batch, heads, length, dim, dtype, *, interpret):
    """Mamba's selective scan at d_inner = heads x dim (2048 at the table's shapes: Mamba-1
    at d_model 1024), d_state 16, u, B, C in ``dtype``, Δ float32 (as the op passes it on)."""
    d_inner, d_state = heads * dim, 16
    keys = jax.random.split(jax.random.key(3), 5)
    u = jax.random.normal(keys[0], (batch, length, d_inner), dtype)
    delta = jax.nn.softplus(jax.random.normal(keys[1], (batch, length, d_inner)) - 2.0)
    A = -jnp.exp(jax.random.normal(keys[2], (d_inner, d_state)))
    B, C = (jax.random.normal(keys[i], (batch, length, d_state), dtype) for i in (3, 4))

    def mosaic(u, delta, A, B, C):
        from jaxlm.kernels.mosaic_gpu.selective_scan import selective_scan as kern

        y, _ = kern(u, delta, A, B, C, jnp.zeros((batch, length), bool),
                    jnp.zeros((batch, d_inner, d_state), jnp.float32), interpret=interpret)
        return y

    def portable(u, delta, A, B, C):  # chunk 8: a call the Mosaic GPU kernel does not take
        from jaxlm.kernels.selective_scan import selective_scan as kern

        y, _ = kern(u, delta, A, B, C, jnp.zeros((batch, length), bool),
                    jnp.zeros((batch, d_inner, d_state), jnp.float32), chunk=8,
                    interpret=interpret)
        return y

    impls = {"jaxlm mosaic_gpu": mosaic,
             "jaxlm pallas": lambda *a: selective_scan(
                 *a, impl="pallas_interpret" if interpret else "pallas"),
             "jaxlm pallas portable (chunk 8)": portable,
             "jaxlm xla": lambda *a: selective_scan(*a, impl="xla")}
    flops = 0  # no matrix products: the rates are the bytes'
    nbytes = 3 * batch * length * d_inner * jnp.dtype(dtype).itemsize
    return (u, delta, A, B, C), impls, 5, flops, nbytes


CASES = {"gla per head (ssd)": gla_case,
         "gla per channel": functools.partial(gla_case, per_channel=True),
         "gated delta rule": delta_case, "attention causal": attention_case,
         "attention causal, 16 packed documents": packed_attention_case,
         "block-sparse attention": block_sparse_case, "selective scan": scan_case}


# ---------------------------------------------------------------------------------------------
# Peers.


def import_peer(name: str):
    """The module, or None with the reason it is absent."""
    try:
        return importlib.import_module(name), None
    except Exception as error:  # noqa: BLE001 - any import failure means absent
        return None, f"{type(error).__name__}: {str(error)[:100]}"


def fla_impls(op: str):
    """flash-linear-attention's Triton ops (torch, CUDA): {impl: (fn on torch tensors)}."""
    torch, why = import_peer("torch")
    if torch is None or not torch.cuda.is_available():
        return {}, f"torch with CUDA: {why or 'no CUDA device'}"
    if op == "gla per head (ssd)":
        module, why = import_peer("fla.ops.simple_gla")
        if module is None:
            return {}, why
        return {"fla chunk_simple_gla": lambda q, k, v, g: module.chunk_simple_gla(
            q, k, v, g)[0]}, None
    if op == "gla per channel":
        module, why = import_peer("fla.ops.gla")
        if module is None:
            return {}, why
        return {"fla chunk_gla": lambda q, k, v, g: module.chunk_gla(q, k, v, g)[0]}, None
    if op == "gated delta rule":
        module, why = import_peer("fla.ops.gated_delta_rule")
        if module is None:
            return {}, why
        return {"fla chunk_gated_delta_rule": lambda q, k, v, b, g: module.chunk_gated_delta_rule(
            q, k, v, g, b)[0]}, None
    return {}, "no flash-linear-attention op for this row"


def time_torch(fn, args, repeats, backward):
    """Median milliseconds of a torch callable with CUDA events."""
    import torch

    def run():
        out = fn(*args)
        if backward:
            out.float().sum().backward()
        return out

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def to_torch(args, backward):
    import numpy as np
    import torch

    out = []
    for i, x in enumerate(args):
        t = torch.from_numpy(np.asarray(x.astype(jnp.float32))).cuda()
        t = t.to(torch.bfloat16) if x.dtype == jnp.bfloat16 else t
        out.append(t.requires_grad_(backward))
    return out


# ---------------------------------------------------------------------------------------------


def run_tests(timeout: int) -> dict:
    """pytest -m gpu over the kernel tests; returns {returncode, summary}."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "kernels")]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [l for l in done.stdout.strip().splitlines() if l.strip()]
        return {"returncode": done.returncode, "summary": lines[-1] if lines else ""}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}


def measure(row, fn, args, n_diff, reference_out, flops, nbytes, peak, repeats):
    """Fills ``row`` with passed / times / rates for one jax implementation."""
    forward = jax.jit(fn)
    out = forward(*args)
    out = out[0] if isinstance(out, tuple) else out
    row["rel_err"] = rel_err(out, reference_out)
    row["passed"] = bool(row["rel_err"] < TOL and jnp.all(jnp.isfinite(out)))
    row["fwd_ms"] = time_ms(forward, args, repeats)
    row["fwd_bwd_ms"] = time_ms(jax.jit(grad_of(fn, n_diff)), args, repeats)
    rates(row, flops, nbytes, peak)


def rates(row, flops, nbytes, peak):
    for key, scale in (("fwd", 1.0), ("fwd_bwd", 3.5)):
        seconds = row.get(f"{key}_ms", 0) / 1e3
        if not seconds:
            continue
        tflops, gbs = flops * scale / seconds / 1e12, nbytes * (2 if scale > 1 else 1) / seconds / 1e9
        row[f"{key}_tflops"], row[f"{key}_gbs"] = tflops, gbs
        if peak:
            row[f"{key}_peak_frac"] = max(tflops * 1e12 / peak[0], gbs * 1e9 / peak[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes, kernels interpreted, no pytest: checks every path")
    parser.add_argument("--lengths", type=int, nargs="*", default=[4096, 16384])
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds for the whole table (rows past it are skipped)")
    parser.add_argument("--test-timeout", type=int, default=100)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--ops", nargs="*", help="only these ops (names as in the table)")
    parser.add_argument("--impls", nargs="*", help="only these implementations")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    backend, kind = jax.default_backend(), jax.devices()[0].device_kind
    dtype = jnp.bfloat16
    if args.dry_run:
        batch, heads, dim, lengths, repeats = 1, 1, 64, [128], 1
    else:
        batch, heads, dim, lengths, repeats = 4, 16, 128, args.lengths, 5
    interpret = args.dry_run and backend != "gpu"
    peak = peak_for(kind) if backend == "gpu" else None
    report = {"backend": backend, "device": kind, "jax": jax.__version__,
              "python": platform.python_version(), "dry_run": args.dry_run,
              "date": time.strftime("%Y-%m-%d")}
    if not (args.dry_run or args.skip_tests):
        report["tests"] = run_tests(args.test_timeout)
        print("pytest -m gpu:", report["tests"], flush=True)
    peers = {"flash-linear-attention (fla)": import_peer("fla")[1] or "present",
             "jax-linear-attention": import_peer("jax_linear_attention")[1] or "present"}
    report["peers"] = peers
    rows = []
    # every op at the first length before any at the next: the budget cuts the long rows
    for length in lengths:
        for op, case in CASES.items():
            if args.ops and op not in args.ops:
                continue
            op_args, impls, n_diff, flops, nbytes = case(batch, heads, length, dim, dtype,
                                                         interpret=interpret)
            shape = f"b{batch} h{heads} l{length} d{dim}"
            base = {"op": op, "backend": backend, "device": kind, "dtype": "bfloat16",
                    "shape": shape}
            if args.impls:
                impls = {k: v for k, v in impls.items() if k in args.impls or k == "jaxlm xla"}
            reference_out = None
            for name in ("jaxlm xla", "jax.nn cudnn"):  # the XLA form; where it fails, cuDNN
                try:
                    reference_out = jax.block_until_ready(jax.jit(impls[name])(*op_args))
                    base["reference"] = name
                    break
                except Exception as error:  # noqa: BLE001 - e.g. out of memory
                    print(f"{op} {shape}: {name} failed as reference: {error}"[:300], flush=True)
            for impl, fn in impls.items():
                row = dict(base, impl=impl, passed=False)
                if interpret and impl.startswith("jax.nn cudnn"):
                    row["error"] = "cuDNN needs a GPU"
                elif time.perf_counter() - start > args.budget:
                    row["error"] = "skipped: time budget spent"
                elif reference_out is None:
                    row["error"] = "no reference output (the XLA form and cuDNN failed)"
                else:
                    try:
                        measure(row, fn, op_args, n_diff, reference_out, flops, nbytes, peak,
                                repeats)
                    except Exception as error:  # noqa: BLE001 - report and go on
                        row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
                rows.append(row)
                print(summary(row), flush=True)
            if backend == "gpu":
                rows.extend(peer_rows(op, base, op_args, reference_out, flops, nbytes, peak,
                                      repeats, start, args.budget))
    for name, status in peers.items():
        if status != "present":
            rows.append({"op": "*", "backend": backend, "device": kind, "dtype": "bfloat16",
                         "shape": "*", "impl": name, "passed": False,
                         "error": f"absent ({status})"})
    report["rows"] = rows
    report["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    return report


def peer_rows(op, base, op_args, reference_out, flops, nbytes, peak, repeats, start, budget):
    """Rows for flash-linear-attention's ops (torch) on the same inputs, heads-last."""
    impls, why = fla_impls(op)
    rows = []
    if why and "no flash-linear-attention op" not in why:
        return [dict(base, impl="fla", passed=False, error=f"absent ({why})")]
    for impl, fn in impls.items():
        row = dict(base, impl=impl, passed=False)
        if time.perf_counter() - start > budget:
            row["error"] = "skipped: time budget spent"
            rows.append(row)
            continue
        try:
            import numpy as np

            args = list(op_args)
            if op == "attention causal":
                raise ValueError("not a flash-linear-attention op")
            t_args = to_torch(args, backward=False)
            out = fn(*t_args)
            row["rel_err"] = rel_err(jnp.asarray(np.asarray(out.float().cpu())),
                                     reference_out)
            row["passed"] = row["rel_err"] < TOL
            row["fwd_ms"] = time_torch(fn, t_args, repeats, backward=False)
            row["fwd_bwd_ms"] = time_torch(fn, to_torch(args, backward=True), repeats, True)
            rates(row, flops, nbytes, peak)
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        rows.append(row)
        print(summary(row), flush=True)
    return rows


COLUMNS = ["op", "shape", "impl", "passed", "rel_err", "fwd_ms", "fwd_bwd_ms", "fwd_tflops",
           "fwd_gbs", "fwd_peak_frac", "fwd_bwd_tflops", "fwd_bwd_gbs", "fwd_bwd_peak_frac",
           "error"]


def fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value).replace("|", "/")


def summary(row):
    return " ".join(f"{c}={fmt(row.get(c))}" for c in COLUMNS if row.get(c) is not None)


def markdown(report) -> str:
    lines = [f"# Device check: {report['device']} ({report['backend']}), JAX {report['jax']}",
             ""]
    if report.get("dry_run"):
        lines += ["Dry run: tiny shapes, Mosaic GPU kernels interpreted; times say nothing "
                  "about speed.", ""]
    if "tests" in report:
        lines += [f"pytest -m gpu: {report['tests']['summary']} "
                  f"(exit {report['tests']['returncode']})", ""]
    lines += ["Peers: " + "; ".join(f"{k}: {v}" for k, v in report["peers"].items()), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
    lines += ["", f"FLOPs: the algorithm's matrix products (fwd+bwd counted as 3.5x fwd); "
              f"bytes: q, k, v read and o written once (fwd+bwd: twice). peak_frac: the larger "
              f"of the two fractions of the data-sheet peak. {report['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
    main()
