"""Speed and memory of the sequence-mixing ops, every form against its reference.

Run:  .venv/bin/python experiments/bench_mixers.py [--lengths 1024 4096 16384] [--ops ...]

For each op and form on the current backend: forward and forward+backward median time, the
compiled scratch memory of forward+backward, and the ratio of the reference's time to the
form's (above 1: the form is faster), all measured in the same run. Forms whose scratch memory
would pass --max-gib are skipped and marked.
"""

from __future__ import annotations

import argparse
import jax
import jax.numpy as jnp

from jaxlm.ops import attention, delta_rule, gated_delta_rule, gated_linear_attention
from jaxlm.ops import diagonal_ssm, linear_attention, selective_scan, ssd
from jaxlm.ops.hippo import hippo_legs, nplr_legs
from jaxlm.ops.s4 import bilinear_lower, dense_ssm, s4_ssm
from jaxlm.ops.ssm import s4d_init
from jaxlm.runner.bench import compile_fn, median_seconds, temp_bytes
from jaxlm.runner.report import markdown_table

BATCH, HEADS, DIM = 1, 4, 64
D_INNER, D_STATE = 256, 16  # selective scan and diagonal SSM channels and state size


def inputs(length, dtype):
    ks = jax.random.split(jax.random.key(0), 6)
    shape = (BATCH, length, HEADS, DIM)
    q, k, v = (jax.random.normal(key, shape, dtype) for key in ks[:3])
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    gates = -jax.nn.softplus(jax.random.normal(ks[3], shape, dtype)) / 16
    head_gates = -jax.nn.softplus(jax.random.normal(ks[4], shape[:3], dtype))
    beta = jax.nn.sigmoid(jax.random.normal(ks[5], shape[:3], dtype))
    ku = jax.random.split(ks[0], 4)
    u = jax.random.normal(ku[0], (BATCH, length, D_INNER), dtype)
    bc = jax.random.normal(ku[1], (BATCH, length, 1, D_STATE), dtype)
    log_re, im = s4d_init("lin", D_INNER, D_STATE)
    return dict(q=q, k=k, v=v, log_g=gates, log_a=head_gates, beta=beta, u=u, bc=bc,
                a_ssm=-jnp.exp(jax.random.normal(ku[2], (D_INNER, D_STATE))).astype(dtype),
                a_diag=-jnp.exp(log_re) + 1j * im)


OPS = {
    "attention": (("reference", "xla"), lambda x, impl: attention(
        x["q"], x["k"], x["v"], impl=impl)),
    "linear_attention": (("reference", "xla"), lambda x, impl: linear_attention(
        x["q"], x["k"], x["v"], impl=impl)),
    "gated_linear_attention": (("reference", "xla"), lambda x, impl: gated_linear_attention(
        x["q"], x["k"], x["v"], x["log_g"], impl=impl)),
    "delta_rule": (("reference", "xla"), lambda x, impl: delta_rule(
        x["q"], x["k"], x["v"], x["beta"], impl=impl)),
    "gated_delta_rule": (("reference", "xla"), lambda x, impl: gated_delta_rule(
        x["q"], x["k"], x["v"], x["beta"], x["log_a"], impl=impl)),
    "selective_scan": (("reference", "xla"), lambda x, impl: selective_scan(
        x["u"], x["u"], x["a_ssm"], x["bc"], x["bc"], delta_softplus=True, impl=impl)),
    "ssd": (("reference", "xla"), lambda x, impl: ssd(
        x["v"], jax.nn.softplus(x["log_a"]), -jnp.ones((HEADS,), x["v"].dtype), x["bc"],
        x["bc"], impl=impl)),
    "diagonal_ssm": (("reference", "xla"), lambda x, impl: diagonal_ssm(
        x["u"], jnp.full((D_INNER,), 0.01, x["u"].dtype), x["a_diag"],
        jnp.ones_like(x["a_diag"]), jnp.ones_like(x["a_diag"]), impl=impl)),
    "s4_ssm": (("reference", "xla"), lambda x, impl: s4_ssm(
        x["u"], jnp.full((D_INNER,), 0.01, x["u"].dtype), *legs_nplr(x["u"].dtype), impl=impl)),
    "dense_ssm": (("reference", "xla"), lambda x, impl: dense_ssm(
        x["u"], *bilinear_lower(jnp.full((D_INNER,), 0.01, x["u"].dtype),
                                *(jnp.asarray(a, x["u"].dtype) for a in hippo_legs(D_STATE))),
        jnp.ones((D_INNER, D_STATE), x["u"].dtype), impl=impl)),
}


def legs_nplr(dtype):
    """S4's HiPPO-LegS initialisation for every channel: (Λ, P, B, C = B) [D_INNER, N/2]."""
    cplx = jnp.promote_types(dtype, jnp.complex64)
    Lambda, P, B, _ = nplr_legs(D_STATE)
    return tuple(jnp.broadcast_to(jnp.asarray(a, cplx), (D_INNER, D_STATE // 2))
                 for a in (Lambda, P, B, B))


def attention_reference_bytes(length):
    return 4 * BATCH * HEADS * length * length * 4  # scores, probabilities and their grads


def measure(op, impl, length, dtype, max_bytes):
    fn = OPS[op][1]
    if op == "attention" and impl == "reference" and attention_reference_bytes(length) > max_bytes:
        return None
    inputs_all = inputs(length, dtype)
    consts = {k: v for k, v in inputs_all.items() if jnp.iscomplexobj(v)}  # not differentiated
    x = {k: v for k, v in inputs_all.items() if k not in consts}
    forward = lambda floats: fn({**floats, **consts}, impl=impl)
    both = jax.grad(lambda floats: jnp.sum(forward(floats).astype(jnp.float32)))
    fwd_compiled = compile_fn(forward, x)
    both_compiled = compile_fn(both, x)
    memory = temp_bytes(both_compiled)
    return dict(fwd=median_seconds(fwd_compiled, x), both=median_seconds(both_compiled, x),
                memory=memory)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-gib", type=float, default=4.0)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    rows = []
    for op in args.ops:
        for length in args.lengths:
            results = {impl: measure(op, impl, length, dtype, args.max_gib * 2**30)
                       for impl in OPS[op][0]}
            ref = results["reference"]
            for impl, r in results.items():
                row = {"op": op, "form": impl, "length": length}
                if r is None:
                    rows.append({**row, "fwd ms": "skipped (memory)"})
                    continue
                row |= {"fwd ms": r["fwd"] * 1e3, "fwd+bwd ms": r["both"] * 1e3,
                        "scratch MiB": (r["memory"] or 0) / 2**20}
                if ref is not None:
                    row |= {"ref/form fwd": ref["fwd"] / r["fwd"],
                            "ref/form fwd+bwd": ref["both"] / r["both"]}
                rows.append(row)
                print(row, flush=True)
    columns = ["op", "form", "length", "fwd ms", "fwd+bwd ms", "scratch MiB", "ref/form fwd",
               "ref/form fwd+bwd"]
    print(f"\nbackend: {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {BATCH}, "
          f"heads {HEADS}, head dim {DIM}, {args.dtype}\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
