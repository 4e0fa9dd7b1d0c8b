"""Communication of the sequence-parallel schemes as the length grows, against theory.

Run:  .venv/bin/python experiments/bench_parallel.py [--lengths 1024 4096 16384] [--devices 8]

On CPU the devices are simulated (the script sets
``--xla_force_host_platform_device_count``), so only the bytes are meaningful there: for each
scheme and length it compiles forward and forward+backward on a mesh whose ``sequence`` axis
spans every device, reads the bytes each collective produces per device from the compiled HLO
(:func:`jaxlm.parallel.comm.collective_bytes`), and prints them beside the theory:

* LASP-2 (delta rule, GLA): one all-gather of every device's final state and transition,
  P · batch · heads · d_k · (d_v + d_k) floats, whatever the length.
* Ring attention: P - 1 hops of this device's key and value chunk (and its segment ids),
  (P - 1) · (length / P) · (kv_heads · 2 · head_dim + 1) · 4 bytes, growing with the length.
  Zig-zag chunks move the same in the ring, plus one chunk of q, k, v, segment ids and
  output each into and out of the zig-zag layout, (length / P) · (4 · heads · head_dim + 1) · 4.
  With a sliding window of W tokens, one hop of the last W - 1 keys when they fit in a chunk
  (constant in the length), else ceil((W - 1) / (length / P)) hops of whole chunks.
* Ulysses: all-to-alls of q, k, v and the output, each this device's whole share
  (length / P) · heads · head_dim · 4 bytes: growing with the length, shrinking with P.

"work max/mean" is the causal attention work (query-half x key-half blocks computed) of the
busiest device over the mean: what zig-zag chunks balance.

Inputs are placed split over the sequence axis, as a sharded training step holds them, so the
backward pass returns gradients split the same way without gathering them.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args(argv)
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import jax.numpy as jnp

    from jaxlm.parallel import (MeshConfig, batch_sharding, make_mesh, ring_attention,
                                sequence_parallel_delta_rule, sequence_parallel_gla,
                                ulysses_attention)
    from jaxlm.parallel.ring import blocks_per_device, ring_hops, window_tail
    from jaxlm.parallel.comm import collective_bytes
    from jaxlm.runner.report import markdown_table

    n = jax.device_count()
    mesh = make_mesh(MeshConfig(sequence=-1))
    batch, heads, dk = 1, 8, 64  # Ulysses splits the heads over the 8 devices
    window = 256

    def ring_bytes(length, hops, keys=None):
        return hops * (length // n if keys is None else keys) * (heads * 2 * dk + 1) * 4

    def windowed_bytes(length):
        tail = window_tail(n, length // n, window, "contiguous")
        return ring_bytes(length, ring_hops(n, length // n, window, "contiguous"), tail)
    mib = 2.0 ** -20

    def inputs(length):
        key = jax.random.split(jax.random.key(0), 4)
        q, k, v = (jax.random.normal(kk, (batch, length, heads, dk)) for kk in key[:3])
        return q, k, v, jax.nn.sigmoid(jax.random.normal(key[3], (batch, length, heads)))

    schemes = {
        "LASP-2 delta rule": (lambda q, k, v, b: sequence_parallel_delta_rule(q, k, v, b,
                                                                              mesh=mesh),
                              lambda length: n * batch * heads * dk * (dk + dk) * 4),
        "LASP-2 GLA": (lambda q, k, v, b: sequence_parallel_gla(q, k, v, -b[..., None] * k ** 2,
                                                                 mesh=mesh),
                       lambda length: n * batch * heads * dk * (dk + dk) * 4),
        "ring attention": (lambda q, k, v, b: ring_attention(q, k, v, mesh=mesh),
                           lambda length: ring_bytes(length, n - 1)),
        "ring attention, zig-zag": (
            lambda q, k, v, b: ring_attention(q, k, v, mesh=mesh, layout="zigzag"),
            lambda length: ring_bytes(length, n - 1) + (length // n) * (4 * heads * dk + 1) * 4),
        f"ring attention, window {window}": (
            lambda q, k, v, b: ring_attention(q, k, v, mesh=mesh, window=window),
            lambda length: windowed_bytes(length)),
        "Ulysses attention": (lambda q, k, v, b: ulysses_attention(q, k, v, mesh=mesh),
                              lambda length: 4 * (length // n) * heads * dk * 4),
    }
    balance = {"ring attention": "contiguous", f"ring attention, window {window}": "contiguous",
               "ring attention, zig-zag": "zigzag"}

    def work(name, length):
        if name not in balance:
            return ""
        counts = blocks_per_device(n, length // n // 2, window if "window" in name else None,
                                   balance[name])
        return max(counts) / (sum(counts) / n)
    rows = []
    for name, (fn, theory) in schemes.items():
        for length in args.lengths:
            xs = [jax.device_put(x, batch_sharding(mesh, x.ndim, sequence=True))
                  for x in inputs(length)]
            forward = jax.jit(fn).lower(*xs).compile()
            both = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2))
                           ).lower(*xs).compile()
            fwd = sum(collective_bytes(forward.as_text()).values())
            bwd = sum(collective_bytes(both.as_text()).values())
            rows.append({"scheme": name, "length": length, "devices": n,
                         "forward MiB": fwd * mib,
                         "theory MiB": None if theory is None else theory(length) * mib,
                         "fwd+bwd MiB": bwd * mib, "work max/mean": work(name, length)})
    print(f"backend: {jax.default_backend()}, {n} devices on the sequence axis; "
          f"batch {batch}, {heads} heads, head dim {dk}, float32; bytes per device")
    print(markdown_table(rows, ["scheme", "length", "devices", "forward MiB", "theory MiB",
                                "fwd+bwd MiB", "work max/mean"]))


if __name__ == "__main__":
    main()
