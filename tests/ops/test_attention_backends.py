"""Library attention kernels: which one ``impl="auto"`` picks on each backend (asserted from a
CPU host through the pure :func:`attention_plan`), and that the wrappers ``auto`` calls compute
jaxlm's attention: splash attention in Pallas' interpreter, and the ``jax.nn.dot_product_attention``
call of the cuDNN path run with ``implementation="xla"`` (cuDNN itself needs a GPU).

Float32 against the float64 materialized reference: the kernels and the jax.nn call compute in
float32, so values and gradients agree to 1e-5 relative (float32 rounding over sums of a few
hundred terms)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops import attention, attention_backends
from jaxlm.ops.attention_backends import (attention_plan, cudnn_attention, dense_segment_ids,
                                          mesh_partitions, splash_attention, splash_block)
from jaxlm.ops.segments import segment_starts
from tests.helpers import rel_err

TOL = 1e-5
BF16, F32 = jnp.bfloat16, jnp.float32
LONG = (1, 4096, 8, 128)  # batch, length, heads, head_dim: 512 MiB of float32 scores


# (backend, dtype, q_shape, plan kwargs, expected)
PLANS = [
    # TPU: splash for every mask jaxlm's attention takes, packed rows included (grouped-query
    # attention never changes the plan: both library kernels take it).
    ("tpu", BF16, LONG, dict(causal=False), "splash"),
    ("tpu", BF16, LONG, dict(causal=True), "splash"),
    ("tpu", F32, LONG, dict(causal=True, window=512), "splash"),
    ("tpu", BF16, LONG, dict(causal=False, window=512), "splash"),
    ("tpu", BF16, LONG, dict(causal=True, packed=True), "splash"),
    ("tpu", BF16, (1, 1000, 8, 64), dict(causal=True, v_head_dim=128), "splash"),
    # ... except where its rules fail: then the XLA forms.
    ("tpu", BF16, (2, 64, 16, 128), dict(), "reference"),            # shorter than a block
    ("tpu", BF16, (1, 4096, 8, 32), dict(), "reference"),            # head dim 32
    ("tpu", jnp.float16, LONG, dict(), "reference"),
    ("tpu", BF16, (8, 16384, 16, 128), dict(), "splash"),
    ("tpu", BF16, (8, 16384, 16, 32), dict(), "xla"),                # scores > 1 GiB
    ("tpu", BF16, LONG, dict(partitioned=True), "reference"),       # auto-sharded mesh
    # GPU: cuDNN for dense, causal and causal-window masks in half precision.
    ("gpu", BF16, LONG, dict(causal=True), "cudnn"),
    ("gpu", jnp.float16, LONG, dict(causal=False), "cudnn"),
    ("gpu", BF16, LONG, dict(causal=True, window=256), "cudnn"),
    ("gpu", BF16, LONG, dict(partitioned=True), "cudnn"),
    # ... the XLA forms where cuDNN cannot express the mask or take the shape.
    ("gpu", BF16, LONG, dict(causal=False, window=256), "reference"),
    ("gpu", BF16, LONG, dict(packed=True), "reference"),
    ("gpu", BF16, (8, 16384, 16, 128), dict(packed=True), "xla"),
    ("gpu", F32, LONG, dict(), "reference"),
    ("gpu", BF16, (1, 4096, 8, 192), dict(), "reference"),
    ("gpu", BF16, LONG, dict(v_head_dim=64), "reference"),
    ("rocm", BF16, LONG, dict(), "reference"),
    # jaxlm's flash kernel where measured to win; block-sparse masks: it or the xla form.
    ("gpu", BF16, LONG, dict(packed=True, flash_measured=True), "pallas"),
    ("gpu", BF16, LONG, dict(flash_measured=True), "cudnn"),
    ("tpu", BF16, LONG, dict(block_sparse=True), "xla"),
    ("tpu", BF16, LONG, dict(block_sparse=True, flash_measured=True), "pallas"),
    ("gpu", BF16, LONG, dict(block_sparse=True, flash_measured=True), "pallas"),
    # A score bias: only the reference takes one.
    ("tpu", BF16, LONG, dict(bias=True), "reference"),
    ("gpu", BF16, LONG, dict(bias=True), "reference"),
    # CPU: the XLA forms, as before.
    ("cpu", F32, (2, 512, 4, 64), dict(), "reference"),
    ("cpu", F32, (2, 513, 4, 64), dict(), "xla"),
    ("cpu", F32, (2, 4096, 4, 64), dict(block_sparse=True, flash_measured=True), "xla"),
]


@pytest.mark.parametrize("backend,dtype,shape,kwargs,expected", PLANS)
def test_auto_picks_the_library_kernel_where_its_rules_hold(backend, dtype, shape, kwargs,
                                                            expected):
    assert attention_plan(backend, dtype, shape, **kwargs) == expected


def test_auto_on_cpu_runs_the_xla_forms_and_library_kernels_refuse_the_wrong_backend():
    q, k, v, _ = _inputs(0, 1, 16, 2, 1, 8, 8)
    assert rel_err(attention(q, k, v), _reference(q, k, v, True, None, None)) < TOL
    with pytest.raises(ValueError, match="impl='splash' compiles only for TPU.*'cpu'"):
        attention(q, k, v, impl="splash")
    with pytest.raises(ValueError, match="impl='cudnn' needs a CUDA GPU.*'cpu'"):
        attention(q, k, v, impl="cudnn")


def _inputs(seed, batch, length, heads, kv_heads, d, dv, packed=False, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, d), dtype)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, d), dtype)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, dv), dtype)
    seg = None
    if packed:  # runs of 23 tokens with ids from {0, 1, 2}, made canonical: one id per run
        raw = jnp.repeat(jax.random.randint(keys[3], (batch, -(-length // 23)), 0, 3), 23,
                         axis=1)[:, :length]
        seg = jnp.cumsum(segment_starts(raw, batch, length), axis=1)
    return q, k, v, seg


def _reference(q, k, v, causal, window, seg):
    wide = lambda x: x.astype(jnp.float64)
    return attention(wide(q), wide(k), wide(v), causal=causal, window=window, segment_ids=seg,
                     impl="reference")


def _check_against_reference(fn, q, k, v, seg, causal, window, x64=True):
    """Values, and the gradients of q, k, v for a random output cotangent. ``x64=False`` runs
    ``fn`` with 64-bit types disabled (as in most programs)."""
    cotangent = jax.random.normal(jax.random.key(9), (*q.shape[:3], v.shape[-1]), jnp.float32)

    def value_and_grads(f, q, k, v, cotangent):
        out, vjp = jax.vjp(f, q, k, v)
        return out, *vjp(cotangent.astype(out.dtype))

    with jax.enable_x64(x64):
        fast = jax.jit(functools.partial(value_and_grads, fn))(q, k, v, cotangent)
    slow = jax.jit(functools.partial(
        value_and_grads, lambda q, k, v: _reference(q, k, v, causal, window, seg)))(
            q, k, v, cotangent)
    for name, got, want in zip(("out", "dq", "dk", "dv"), fast, slow):
        assert rel_err(got, want) < TOL, name


# (batch, length, heads, kv_heads, causal, window, packed, x64): 200, 130 and 100 are padded
# inside; with x64 off, grouped-query attention runs splash's own head layout (with x64 on,
# repeated kv heads).
SPLASH_CASES = [
    (1, 200, 4, 2, True, None, True, False),    # causal GQA, packed, padded
    (2, 130, 2, 1, False, 48, True, True),      # two-sided window, packed, padded (masked keys)
    (1, 256, 2, 2, True, 40, False, True),      # causal window across two blocks
    (1, 100, 2, 1, False, None, False, False),  # dense GQA, padded (masked keys)
]


@pytest.mark.parametrize("batch,length,heads,kv_heads,causal,window,packed,x64", SPLASH_CASES)
def test_splash_attention_interpreted_equals_the_reference(batch, length, heads, kv_heads,
                                                           causal, window, packed, x64):
    q, k, v, seg = _inputs(1, batch, length, heads, kv_heads, 8, 16, packed)
    fn = lambda q, k, v: splash_attention(q, k, v, causal=causal, window=window,
                                          segment_ids=seg, block_size=128, interpret=True)
    _check_against_reference(fn, q, k, v, seg, causal, window, x64=x64)


# (batch, length, heads, kv_heads, causal, window)
CUDNN_CASES = [
    (2, 37, 4, 2, True, None),
    (1, 37, 4, 1, True, 9),
    (1, 20, 2, 2, False, None),
    (1, 20, 2, 1, False, 5),  # cuDNN refuses this one (below); the call itself is right
]


@pytest.mark.parametrize("batch,length,heads,kv_heads,causal,window", CUDNN_CASES)
def test_cudnn_call_run_by_xla_equals_the_reference(batch, length, heads, kv_heads, causal,
                                                    window):
    q, k, v, _ = _inputs(2, batch, length, heads, kv_heads, 8, 8)
    fn = lambda q, k, v: cudnn_attention(q, k, v, causal=causal, window=window,
                                         implementation="xla")
    _check_against_reference(fn, q, k, v, None, causal, window)


def test_cudnn_wrapper_refuses_what_cudnn_cannot_express():
    q, k, v, seg = _inputs(3, 1, 16, 2, 1, 8, 8, packed=True)
    with pytest.raises(ValueError, match="only with causal=True, got window=4"):
        cudnn_attention(q, k, v, causal=False, window=4)
    with pytest.raises(ValueError, match="segment_ids"):
        cudnn_attention(q, k, v, segment_ids=seg, implementation="xla")
    with pytest.raises(ValueError, match=r"v_head_dim \(4\) must equal head_dim \(8\)"):
        cudnn_attention(q, k, v[..., :4], implementation="xla")


def test_splash_blocks_and_dense_segment_ids():
    assert [splash_block(n) for n in (1, 128, 200, 384, 512, 640, 4096)] == [
        128, 128, 256, 128, 512, 128, 512]
    ids = jnp.array([[7, 7, -3, 2**40, 2**40, 7]])
    assert dense_segment_ids(ids).tolist() == [[1, 1, 0, 4, 4, 1]]


@pytest.mark.parametrize("causal,window,packed", [(True, None, True), (False, 256, False)])
def test_splash_lowers_for_tpu_forward_and_backward(causal, window, packed):
    """Mosaic lowering from a CPU host at a production-like shape (bfloat16, head_dim 128,
    grouped-query, length 1000 padded to 1024); the device compile still needs a TPU."""
    spec = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)

    def loss(q, k, v, seg):
        out = splash_attention(q, k, v, causal=causal, window=window,
                               segment_ids=seg if packed else None)
        return jnp.sum(out.astype(jnp.float32))

    with jax.enable_x64(False):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
            spec(1, 1000, 4, 128), spec(1, 1000, 2, 128), spec(1, 1000, 2, 128),
            spec(1, 1000, dtype=jnp.int32)).lower(lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dQ, dK/dV kernels


def test_auto_on_a_tpu_runs_splash(monkeypatch):
    """``attention(impl="auto")`` as a TPU host runs it: lowered for TPU, splash's kernels."""
    monkeypatch.setattr(attention_backends, "current_backend", lambda: "tpu")
    spec = jax.ShapeDtypeStruct((1, 256, 2, 128), jnp.bfloat16)
    with jax.enable_x64(False):
        lowered = jax.jit(attention).trace(spec, spec, spec).lower(lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") == 1


def test_auto_on_a_gpu_calls_cudnn(monkeypatch):
    """``attention(impl="auto")`` as a CUDA host calls jax.nn.dot_product_attention with
    implementation="cudnn" (run here by its xla implementation)."""
    calls = []
    real = jax.nn.dot_product_attention

    def record(*args, implementation, **kwargs):
        calls.append(implementation)
        return real(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(attention_backends, "current_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", record)
    q, k, v, _ = _inputs(4, 1, 24, 4, 2, 8, 8, dtype=jnp.bfloat16)
    out = attention(q, k, v, window=5)
    assert calls == ["cudnn"]
    assert rel_err(out, _reference(q, k, v, True, 5, None)) < 1e-2  # bfloat16 output
    # Packed rows: the XLA forms.
    seg = jnp.repeat(jnp.arange(2), 12)[None]
    attention(q, k, v, segment_ids=seg)
    assert calls == ["cudnn"]


def test_a_mesh_in_context_partitions_except_inside_shard_map():
    mesh = jax.make_mesh((len(jax.devices()),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    assert not mesh_partitions()
    with jax.set_mesh(mesh):
        assert mesh_partitions()
        inside = []
        jax.shard_map(lambda x: inside.append(mesh_partitions()) or x, mesh=mesh,
                      in_specs=jax.P("data"), out_specs=jax.P("data"))(
                          jnp.zeros(len(jax.devices())))
        assert inside == [False]
