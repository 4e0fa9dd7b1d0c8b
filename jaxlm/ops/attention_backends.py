"""Library attention kernels behind :func:`jaxlm.ops.attention`, and the rule that picks one.

* TPU: JAX's splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``, the
  sparse flash-attention kernel the JAX team keeps tuned), through :func:`splash_attention`.
* GPU (CUDA): cuDNN's fused flash attention through
  ``jax.nn.dot_product_attention(..., implementation="cudnn")``, through
  :func:`cudnn_attention`.

:func:`attention_plan` is the whole dispatch rule of ``attention(impl="auto")`` as a pure
function of the backend, dtype, shapes and mask kind, so tests can ask from a CPU host what a TPU
or a GPU would run. Library kernels are chosen by rule; jaxlm's own flash kernel only where the
committed device measurements say it passed and won (the ``flash_measured`` argument); the XLA
forms everywhere else (always correct).

What runs where (``impl="auto"``):

=========================  ==========================  ==========================
mask                       TPU                         GPU (CUDA)
=========================  ==========================  ==========================
dense / causal             splash                      cuDNN
causal sliding window      splash                      cuDNN
two-sided window           splash                      XLA forms
packed (segment_ids)       splash                      XLA forms
score bias                 reference                   reference
=========================  ==========================  ==========================

Splash needs bfloat16 or float32, head dims that are multiples of 64 (the kernel pads smaller
ones to its 128 lanes, wasting most of each vector) and length >= 128; lengths that are not a
multiple of its block are padded inside (padded keys are masked: they follow every real query
under a causal mask, and carry a segment id of their own otherwise). It is not picked under an
auto-sharded mesh of more than one device (a ``pallas_call`` is not partitioned by XLA; inside
``shard_map`` it is fine). cuDNN needs bfloat16 or float16, head_dim == v_head_dim, a multiple
of 8 and <= 128, and a window only with a causal mask; packed rows have no argument in
``jax.nn.dot_product_attention`` (its sequence lengths express only one document per row
followed by padding), so they run the XLA forms.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import accepts_numpy

# The XLA forms, as ``auto`` picked them before library kernels: on CPU the materialized
# reference below this many positions; on accelerators wherever its [batch, heads, length,
# length] float32 scores fit this budget; else the blockwise form.
_REFERENCE_MAX_LENGTH_CPU = 512
_REFERENCE_MAX_SCORE_BYTES = 2**30

_SPLASH_LANES = 128  # splash's blocks are multiples of the TPU lane width
_SPLASH_BLOCKS = (512, 256, 128)  # largest first; each divides the next larger
_SPLASH_DTYPES = ("bfloat16", "float32")
_CUDNN_DTYPES = ("bfloat16", "float16")
_CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper with a recent cuDNN; 128 holds everywhere


def attention_plan(backend: str, dtype, q_shape: tuple[int, int, int, int], *,
                   v_head_dim: int | None = None,
                   causal: bool = True, window: int | None = None, packed: bool = False,
                   block_sparse: bool = False, bias: bool = False, partitioned: bool = False,
                   flash_measured: bool = False) -> str:
    """Which form ``attention(impl="auto")`` runs. Grouped-query attention does not change it
    (splash and cuDNN both take any kv_heads dividing heads).

    Args:
      backend: "cpu", "tpu", "gpu" (CUDA) or "rocm".
      dtype: q's dtype.
      q_shape: (batch, length, heads, head_dim).
      v_head_dim: v's head dim; default head_dim.
      causal, window: the mask, as :func:`jaxlm.ops.attention` takes it.
      packed: segment_ids are given.
      block_sparse: a block mask (:func:`jaxlm.ops.block_sparse_attention`), which no library
        kernel takes.
      bias: a score bias is given (only the reference takes one).
      partitioned: an auto-sharded mesh of more than one device is in context.
      flash_measured: the committed device measurements hold a passing entry, faster than the
        XLA form, for jaxlm's flash-attention kernel on this backend, dtype and shape.

    Returns one of "splash", "cudnn", "pallas" (jaxlm's flash kernel), "reference", "xla".
    """
    batch, length, heads, head_dim = q_shape
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    dtype = jnp.dtype(dtype).name
    if bias:
        return "reference"
    if block_sparse:
        return "pallas" if flash_measured and backend != "cpu" else "xla"
    if backend == "tpu" and not partitioned and _splash_fits(dtype, length, head_dim,
                                                             v_head_dim):
        return "splash"
    if backend == "gpu" and batch * length > 0 and _cudnn_fits(dtype, head_dim, v_head_dim,
                                                               causal, window, packed):
        return "cudnn"
    if flash_measured and backend != "cpu":
        return "pallas"
    if backend == "cpu":
        small = length <= _REFERENCE_MAX_LENGTH_CPU
    else:
        small = 4 * batch * heads * length * length <= _REFERENCE_MAX_SCORE_BYTES
    return "reference" if small else "xla"


def _splash_fits(dtype: str, length: int, head_dim: int, v_head_dim: int) -> bool:
    return (dtype in _SPLASH_DTYPES and length >= _SPLASH_LANES
            and head_dim % 64 == 0 and v_head_dim % 64 == 0)


def _cudnn_fits(dtype: str, head_dim: int, v_head_dim: int, causal: bool, window: int | None,
                packed: bool) -> bool:
    return (dtype in _CUDNN_DTYPES and head_dim == v_head_dim and head_dim % 8 == 0
            and head_dim <= _CUDNN_MAX_HEAD_DIM and (causal or window is None) and not packed)


def current_backend() -> str:
    """JAX's default backend as :func:`attention_plan` names it ("rocm" for AMD GPUs)."""
    backend = jax.default_backend()
    if backend == "gpu" and "rocm" in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def mesh_partitions() -> bool:
    """Whether the mesh in context splits arrays over more than one device automatically (the
    axes an enclosing ``shard_map`` took over are local)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    return any(size > 1 for name, size in mesh.shape.items() if name not in mesh.manual_axes)


def library_attention(kind: str, q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool,
                      window: int | None, segment_ids: jax.Array | None, scale: float
                      ) -> jax.Array:
    """Runs ``kind`` ("splash" or "cudnn") for :func:`jaxlm.ops.attention`, compiled for the
    backend; raises a ValueError naming the backend when it has no such kernel."""
    backend = current_backend()
    if kind == "splash":
        if backend != "tpu":
            raise ValueError(
                f"attention: impl='splash' compiles only for TPU, this backend is {backend!r}; "
                "jaxlm.ops.attention_backends.splash_attention(..., interpret=True) runs it in "
                "Pallas' interpreter anywhere")
        return splash_attention(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                                scale=scale)
    if backend != "gpu":
        raise ValueError(f"attention: impl='cudnn' needs a CUDA GPU, this backend is "
                         f"{backend!r}")
    return cudnn_attention(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                           scale=scale)


# --------------------------------------------------------------------------------------------
# Splash attention (TPU).


def _splash():
    """The splash-attention module: the one place jaxlm imports it (the same path and API in
    JAX 0.10 through 0.12)."""
    from jax.experimental.pallas.ops.tpu import splash_attention

    return splash_attention


def splash_block(length: int) -> int:
    """The block length splash runs at for ``length`` positions: the largest of 512, 256, 128
    that divides ``length`` rounded up to a multiple of 128 (so padding stays below 128)."""
    lanes = -(-length // _SPLASH_LANES) * _SPLASH_LANES
    return next(b for b in _SPLASH_BLOCKS if lanes % b == 0)


@accepts_numpy
def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                     window: int | None = None, segment_ids: jax.Array | None = None,
                     scale: float | None = None, block_size: int | None = None,
                     interpret: bool = False) -> jax.Array:
    """Attention as :func:`jaxlm.ops.attention` defines it, by JAX's splash-attention kernel
    (sparse flash attention; "FlashAttention: Fast and Memory-Efficient Exact Attention with
    IO-Awareness").

    q: [batch, length, heads, head_dim]; k: [batch, length, kv_heads, head_dim]; v: [batch,
    length, kv_heads, v_head_dim]; grouped-query attention by splash's own head layout (query
    head h reads kv head h // (heads // kv_heads)). segment_ids: [batch, length] integer
    document ids (equal id, same document) or None. ``block_size``: a multiple of 128 (default
    :func:`splash_block`); the length is padded inside to a multiple of it. ``interpret``: run
    in Pallas' interpreter (any backend; the CPU tests). Returns [batch, length, heads,
    v_head_dim] in q's dtype. Splash computes in float32; q is scaled in its own dtype first.
    """
    batch, length, heads, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if jax.config.jax_enable_x64 and k.shape[2] != heads:
        # Splash's grouped-query index maps divide an int32 program id by a Python int, which
        # fails with 64-bit types enabled; repeating the kv heads makes the division trivial.
        k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
    block = splash_block(length) if block_size is None else block_size
    if block % _SPLASH_LANES:
        raise ValueError(f"splash_attention: block_size must be a multiple of "
                         f"{_SPLASH_LANES}, got {block}")
    padded = -(-length // block) * block
    pad = lambda x: jnp.moveaxis(jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))),
                                 2, 1)  # -> [batch, heads, padded, d]
    qh, kh, vh = pad(q * jnp.asarray(scale, q.dtype)), pad(k), pad(v)
    kernel = _splash_kernel(heads, padded, causal, window, block, interpret)
    if segment_ids is None and (causal or padded == length):
        out = jax.vmap(kernel)(qh, kh, vh)
    else:  # padded keys get an id no real token has, so no real query reads them
        ids = (jnp.zeros((batch, length), jnp.int32) if segment_ids is None
               else dense_segment_ids(segment_ids))
        ids = jnp.pad(ids, ((0, 0), (0, padded - length)), constant_values=length)
        out = jax.vmap(kernel)(qh, kh, vh, _splash().SegmentIds(ids, ids))
    return jnp.moveaxis(out, 1, 2)[:, :length].astype(q.dtype)


def dense_segment_ids(segment_ids: jax.Array) -> jax.Array:
    """[batch, length] ids -> int32 ids in [0, length): equal ids stay equal, different ids stay
    different (each id becomes the number of smaller ids in its row), whatever their dtype."""
    rank = lambda row: jnp.searchsorted(jnp.sort(row), row, side="left")
    return jax.vmap(rank)(segment_ids).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, length: int, causal: bool, window: int | None, block: int,
                   interpret: bool):
    sa = _splash()
    shape = (length, length)
    if window is not None:
        mask = sa.LocalMask(shape, (window - 1, 0 if causal else window - 1), 0)
    elif causal:
        mask = sa.CausalMask(shape)
    else:
        mask = sa.FullMask(shape)
    sizes = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                          block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                          block_q_dq=block, block_kv_dq=block)
    return sa.make_splash_mha(sa.MultiHeadMask([mask] * heads), block_sizes=sizes,
                              head_shards=1, q_seq_shards=1, interpret=interpret)


# --------------------------------------------------------------------------------------------
# cuDNN (GPU).


@accepts_numpy
def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                    window: int | None = None, segment_ids: jax.Array | None = None,
                    scale: float | None = None, implementation: str = "cudnn") -> jax.Array:
    """Attention as :func:`jaxlm.ops.attention` defines it, by
    ``jax.nn.dot_product_attention`` (cuDNN's fused flash attention by default;
    ``implementation="xla"`` runs the same call on any backend, which is how the CPU tests
    check the arguments).

    q: [batch, length, heads, head_dim]; k, v: [batch, length, kv_heads, head_dim] (grouped-query
    attention natively). cuDNN takes bfloat16 / float16 and a window only with a causal mask.
    Returns [batch, length, heads, head_dim] in q's dtype. Raises a ValueError for packed rows
    (``segment_ids``: no argument of ``jax.nn.dot_product_attention`` expresses them), for
    ``v_head_dim != head_dim``, and, with cuDNN, for a two-sided window.
    """
    op = "cudnn_attention"
    if segment_ids is not None:
        raise ValueError(f"{op}: packed rows (segment_ids) have no form in "
                         "jax.nn.dot_product_attention; use impl='xla' or 'pallas'")
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: v_head_dim ({v.shape[-1]}) must equal head_dim "
                         f"({q.shape[-1]})")
    if implementation == "cudnn" and window is not None and not causal:
        raise ValueError(f"{op}: cuDNN takes a sliding window only with causal=True, got "
                         f"window={window}, causal=False")
    local = None if window is None else (window - 1, 0 if causal else window - 1)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        local_window_size=local,
                                        implementation=implementation)
