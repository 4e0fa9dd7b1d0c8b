"""The Pallas kernels (jaxlm.kernels) against the XLA forms of the same ops, on this backend.

Run:  .venv/bin/python experiments/bench_kernels.py [--length 4096] [--dtype bfloat16]

One row per op and pass (forward; forward + backward): median time of the kernel
(impl="pallas") and of the XLA form (impl="xla") measured in the same run, their ratio
(above 1: the kernel is faster), and the kernel's achieved FLOP/s (attention, chunked
recurrences: the matrix-product FLOPs of the algorithm) or bandwidth (selective scan: bytes of
its inputs and outputs) with its share of the device's peak where the device is known.
On CPU, Pallas compiles only through its interpreter, which says nothing about speed: the
script times the XLA forms alone and says so (--interpret runs the kernels interpreted, to
check that they run).

Every run also prints the TPU kernels' VMEM budget (``jaxlm.kernels.vmem``): bytes per
program of each forward and backward kernel at head dim --dim and several lengths, which must
not grow with the length (``--vmem-only`` prints just that table, on any backend).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxlm.kernels import vmem
from jaxlm.ops import attention, gated_delta_rule, gated_linear_attention, selective_scan
from jaxlm.ops.sparse_attention import block_sparse_attention
from jaxlm.runner.bench import compile_fn, median_seconds
from jaxlm.runner.report import markdown_table

# Dense bf16 matrix-unit FLOP/s and memory bandwidth (bytes/s) from the vendors' data sheets.
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "TPU v5 lite": (197e12, 819e9),
         "TPU v4": (275e12, 1.2e12), "TPU v5p": (459e12, 2.76e12), "TPU v6 lite": (918e12, 1.64e12)}


def peak_for(kind: str):
    return next((v for k, v in PEAKS.items() if k.lower() in kind.lower()), None)


def cases(batch, length, heads, dim, dtype, block):
    """name -> (op(impl, *args), args, fwd FLOPs or None, bytes moved or None)."""
    keys = iter(jax.random.split(jax.random.key(0), 16))
    normal = lambda *shape: jax.random.normal(next(keys), shape, dtype)
    q, k, v = (normal(batch, length, heads, dim) for _ in range(3))
    k_unit = k / jnp.linalg.norm(k.astype(jnp.float32), axis=-1, keepdims=True).astype(dtype)
    log_a = -jax.nn.softplus(normal(batch, length, heads)).astype(jnp.float32)
    log_g = -jax.nn.softplus(normal(batch, length, heads, dim)).astype(jnp.float32) / 16
    beta = jax.nn.sigmoid(normal(batch, length, heads)).astype(jnp.float32)
    n = -(-length // block)
    rows = jnp.arange(n)
    sparse_mask = (rows[:, None] - rows[None, :] < 4) | (rows[None, :] == 0)  # sink + local 4
    sparse_mask = (sparse_mask & (rows[None, :] <= rows[:, None]))[None, None]
    d_inner, d_state = heads * dim, 16
    u, delta = normal(batch, length, d_inner), normal(batch, length, d_inner)
    A = -jnp.exp(normal(d_inner, d_state).astype(jnp.float32))
    B, C = normal(batch, length, d_state), normal(batch, length, d_state)
    itemsize = jnp.dtype(dtype).itemsize
    attn_flops = 2 * batch * heads * length * length * dim  # causal: half of 4·L²·d
    chunk_flops = lambda c: 4 * batch * heads * length * (c + 2 * dim) * dim
    return {
        "attention causal": (lambda impl, q, k, v: attention(q, k, v, impl=impl,
                                                              block_size=block),
                             (q, k, v), attn_flops, None),
        "block-sparse (sink + 4 local)": (
            lambda impl, q, k, v: block_sparse_attention(
                q, k, v, sparse_mask, block_size=block, max_blocks=5, impl=impl),
            (q, k, v), 4 * batch * heads * length * 5 * block * dim, None),
        "ssd / gla per head": (lambda impl, q, k, v, a: gated_linear_attention(
            q, k, v, a, impl=impl), (q, k, v, log_a), chunk_flops(64), None),
        "gla per channel": (lambda impl, q, k, v, g: gated_linear_attention(
            q, k, v, g, impl=impl), (q, k, v, log_g), chunk_flops(64), None),
        "gated delta rule": (lambda impl, q, k, v, b, a: gated_delta_rule(
            q, k, v, b, a, impl=impl), (q, k_unit, v, beta, log_a), 2 * chunk_flops(64), None),
        "selective scan": (lambda impl, u, d, A, B, C: selective_scan(
            u, d, A, B, C, delta_softplus=True, impl=impl), (u, delta, A, B, C), None,
            (3 * batch * length * d_inner + 2 * batch * length * d_state) * itemsize),
    }


def time_pass(op, impl, args, backward):
    fn = lambda *a: op(impl, *a)
    if backward:
        diff = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
        fn = jax.grad(lambda *a: jnp.sum(op(impl, *a).astype(jnp.float32)), argnums=diff)
    return median_seconds(compile_fn(fn, *args), *args, repeats=3)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--only", nargs="*", help="names of the rows to run")
    parser.add_argument("--interpret", action="store_true",
                        help="on CPU, also run the kernels in Pallas' interpreter")
    parser.add_argument("--vmem-only", action="store_true",
                        help="print only the TPU kernels' VMEM budget table")
    args = parser.parse_args()
    print_vmem_table(args.dim, jnp.dtype(args.dtype))
    if args.vmem_only:
        return
    backend = jax.default_backend()
    kind = jax.devices()[0].device_kind
    run_kernels = backend != "cpu" or args.interpret
    kernel_impl = "pallas_interpret" if backend == "cpu" else "pallas"
    peak = peak_for(kind)
    rows = []
    for name, (op, op_args, flops, nbytes) in cases(args.batch, args.length, args.heads,
                                                     args.dim, jnp.dtype(args.dtype),
                                                     args.block).items():
        if args.only and name not in args.only:
            continue
        for backward in (False, True):
            row = {"op": name, "pass": "fwd+bwd" if backward else "fwd",
                   "xla ms": time_pass(op, "xla", op_args, backward) * 1e3}
            if run_kernels:
                try:
                    seconds = time_pass(op, kernel_impl, op_args, backward)
                except Exception as error:  # noqa: BLE001 - report and go on
                    row["kernel ms"] = f"failed: {type(error).__name__}: {str(error)[:120]}"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                row["kernel ms"] = seconds * 1e3
                row["xla / kernel"] = row["xla ms"] / row["kernel ms"]
                work = (flops * (3.5 if backward else 1)) if flops else None
                if work:
                    row["kernel TFLOP/s"] = work / seconds / 1e12
                    if peak:
                        row["% peak"] = 100 * work / seconds / peak[0]
                elif nbytes:
                    row["kernel GB/s"] = nbytes * (3 if backward else 1) / seconds / 1e9
                    if peak:
                        row["% peak"] = 100 * nbytes * (3 if backward else 1) / seconds / peak[1]
            rows.append(row)
            print(row, flush=True)
    print(f"\nbackend: {backend} ({kind}); batch {args.batch}, length {args.length}, heads "
          f"{args.heads}, head dim {args.dim}, {args.dtype}, attention block {args.block}")
    if not run_kernels:
        print("CPU: Pallas kernels compile only through the interpreter, so only the XLA "
              "forms are timed (--interpret runs the kernels interpreted, not for speed).")
    elif backend == "cpu":
        print("kernel times are Pallas' interpreter on CPU: a check that the kernels run, "
              "not a speed measurement.")
    print()
    print(markdown_table(rows, ["op", "pass", "kernel ms", "xla ms", "xla / kernel",
                                "kernel TFLOP/s", "kernel GB/s", "% peak"]))


def print_vmem_table(head_dim, dtype):
    rows = vmem.budget_table((1024, 16384, 65536), head_dim=head_dim, dtype=dtype)
    table = {}
    for row in rows:
        entry = table.setdefault((row["case"], row["kernel"]),
                                 {"case": row["case"], "kernel": row["kernel"]})
        entry[f"L={row['length']}"] = f"{row['bytes'] / 2 ** 20:.2f} MiB"
    print(f"TPU kernels' VMEM per program (blocks double-buffered + scratch), head dim "
          f"{head_dim}, {jnp.dtype(dtype).name} inputs, float32 state; the default scoped "
          f"limit is {vmem.DEFAULT_SCOPED_LIMIT / 2 ** 20:.0f} MiB:\n")
    columns = ["case", "kernel", "L=1024", "L=16384", "L=65536"]
    print(markdown_table(list(table.values()), columns) + "\n", flush=True)


if __name__ == "__main__":
    main()
