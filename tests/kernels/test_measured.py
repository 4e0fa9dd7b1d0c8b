"""impl="auto" runs jaxlm's own kernels only where a committed device measurement says they
passed and won: the table's lookup, and rows proposed from a device check's JSON."""

import json

from jaxlm.kernels import measured

ROW = measured.Measured("gpu", "gated_linear_attention", "bfloat16", (4096, 16384), (128,),
                        1.4, "NVIDIA H200", "2026-11-29")


def test_the_committed_table_is_empty_until_a_device_measures():
    assert measured.MEASURED == ()
    assert not measured.kernel_wins("gated_linear_attention", "gpu", "bfloat16", 4096, 128)


def test_a_row_covers_its_backend_op_dtype_lengths_and_head_dims_only():
    table = (ROW,)
    wins = lambda *a: measured.kernel_wins(*a, table=table)
    assert wins("gated_linear_attention", "cuda", "bfloat16", 8192, 128)
    assert not wins("gated_linear_attention", "tpu", "bfloat16", 8192, 128)
    assert not wins("gated_delta_rule", "gpu", "bfloat16", 8192, 128)
    assert not wins("gated_linear_attention", "gpu", "float32", 8192, 128)
    assert not wins("gated_linear_attention", "gpu", "bfloat16", 1024, 128)
    assert not wins("gated_linear_attention", "gpu", "bfloat16", 8192, 64)


def test_rows_from_a_device_check(tmp_path):
    """A kernel that passed and beat the XLA form becomes a row; a failing or slower one
    does not."""
    base = {"backend": "gpu", "device": "NVIDIA H200", "dtype": "bfloat16"}
    rows = [
        dict(base, op="gla per head (ssd)", shape="b4 h16 l4096 d128", impl="jaxlm xla",
             passed=True, fwd_bwd_ms=10.0),
        dict(base, op="gla per head (ssd)", shape="b4 h16 l4096 d128",
             impl="jaxlm mosaic_gpu", passed=True, fwd_bwd_ms=4.0),
        dict(base, op="gla per head (ssd)", shape="b4 h16 l4096 d128", impl="jaxlm pallas",
             passed=True, fwd_bwd_ms=8.0),
        dict(base, op="gated delta rule", shape="b4 h16 l4096 d128", impl="jaxlm xla",
             passed=True, fwd_bwd_ms=10.0),
        dict(base, op="gated delta rule", shape="b4 h16 l4096 d128", impl="jaxlm pallas",
             passed=False, fwd_bwd_ms=2.0),
        dict(base, op="attention causal", shape="b4 h16 l4096 d128", impl="jaxlm xla",
             passed=True, fwd_bwd_ms=1.0),
        dict(base, op="attention causal", shape="b4 h16 l4096 d128", impl="jaxlm pallas",
             passed=True, fwd_bwd_ms=3.0),
    ]
    rows += [dict(base, op="selective scan", shape="b4 h16 l4096 d128", impl=impl, passed=True,
                  fwd_bwd_ms=ms) for impl, ms in (("jaxlm xla", 9.0), ("jaxlm mosaic_gpu", 3.0))]
    path = tmp_path / "device_check.json"
    path.write_text(json.dumps({"date": "2026-11-29", "rows": rows}))
    row, scan = measured.rows_from_device_check(path)
    assert (scan.op, scan.head_dims, scan.speedup) == ("selective_scan", (16,), 3.0)  # d_state
    assert (row.backend, row.op, row.dtype, row.lengths, row.head_dims, row.speedup) == (
        "gpu", "gated_linear_attention", "bfloat16", (4096, 4096), (128,), 2.5)
    assert "mosaic_gpu" in row.source


def test_auto_picks_the_kernel_only_where_a_row_covers_the_call(monkeypatch):
    """The ops' impl="auto" reads the table on an accelerator (never on CPU); an explicit impl
    is never overridden."""
    import jax

    from jaxlm.ops.checks import Impl, auto_kernel

    monkeypatch.setattr(measured, "MEASURED", (ROW,))
    pick = lambda impl, length: auto_kernel("gated_linear_attention", impl, "bfloat16",
                                            length, 128)
    assert pick(Impl.AUTO, 4096) is Impl.AUTO  # CPU: no kernel
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert pick(Impl.AUTO, 4096) is Impl.PALLAS
    assert pick(Impl.AUTO, 1024) is Impl.AUTO  # outside the measured lengths
    assert pick(Impl.XLA, 4096) is Impl.XLA
    # the per-head kernel's row does not cover per-channel gates (another kernel)
    assert auto_kernel("gated_linear_attention/per_channel", Impl.AUTO, "bfloat16", 4096,
                       128) is Impl.AUTO
