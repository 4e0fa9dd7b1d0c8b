"""Argument checks shared by the ops: each error names the argument, what it got and what it
expects."""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Impl(str, enum.Enum):
    """Which form of an op runs (recurrentgemma's ``ScanType`` idea).

    ``AUTO`` picks the fastest form that holds for the backend and shapes; ``REFERENCE`` is the
    slow, obviously-correct form; ``XLA`` is the fast plain-JAX form; ``PALLAS`` is a kernel
    from :mod:`jaxlm.kernels` compiled for the backend; ``PALLAS_INTERPRET`` runs the same kernel
    in Pallas' interpreter on any backend (tests and debugging; slow). ``SPLASH`` and ``CUDNN``
    are library attention kernels (JAX's splash attention on TPU, cuDNN's fused attention on
    GPU; :mod:`jaxlm.ops.attention_backends`).
    """

    AUTO = "auto"
    REFERENCE = "reference"
    XLA = "xla"
    PALLAS = "pallas"
    PALLAS_INTERPRET = "pallas_interpret"
    SPLASH = "splash"
    CUDNN = "cudnn"

    @property
    def is_pallas(self) -> bool:
        return self in (Impl.PALLAS, Impl.PALLAS_INTERPRET)

    @property
    def interpret(self) -> bool:
        return self is Impl.PALLAS_INTERPRET


def resolve_impl(op: str, impl: str | Impl, available: Sequence[str]) -> Impl:
    """Parses ``impl`` for ``op``, raising if it is unknown or not offered by that op
    (an op offering "pallas" also offers "pallas_interpret")."""
    try:
        parsed = Impl(impl)
    except ValueError:
        raise ValueError(
            f"{op}: impl={impl!r} is not a known form; expected one of "
            f"{[i.value for i in Impl]}") from None
    if "pallas" in available:
        available = (*available, Impl.PALLAS_INTERPRET.value)
    if parsed is not Impl.AUTO and parsed.value not in available:
        raise ValueError(f"{op}: impl={parsed.value!r} is not available for this op; "
                         f"expected one of {['auto', *available]}")
    return parsed


def check_rank(op: str, name: str, x: jax.Array, layout: str) -> None:
    """Raises unless ``x`` has as many axes as ``layout`` names, e.g. ``"[batch, length, dim]"``."""
    rank = len(layout.strip("[]").split(","))
    if x.ndim != rank:
        raise ValueError(f"{op}: {name} must have shape {layout}, got shape {tuple(x.shape)}")


def check_shape(op: str, name: str, x: jax.Array, expected: Sequence[int | None],
                layout: str) -> None:
    """Raises unless ``x.shape`` matches ``expected`` (``None`` matches any size)."""
    shape = tuple(x.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        want = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{op}: {name} must have shape {layout} = {want}, got {shape}")


def check_positive(op: str, name: str, value: int | None, *, allow_none: bool = True) -> None:
    """Raises unless ``value`` is a positive int (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive integer"
                         f"{' or None' if allow_none else ''}, got {value!r}")


def check_positive_fields(section: str, config: object, names: Sequence[str]) -> None:
    """Raises unless each named field of a config dataclass is a positive int; the message names
    the dotted config key, e.g. ``mqar.seq_len``."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{section}.{name} must be a positive integer, got {value!r}")


def check_qkv(op: str, q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    """Raises unless q [batch, length, heads, head_dim], k [batch, length, kv_heads, head_dim]
    and v [batch, length, kv_heads, v_head_dim] agree, with kv_heads dividing heads."""
    check_rank(op, "q", q, "[batch, length, heads, head_dim]")
    batch, length, heads, head_dim = q.shape
    check_rank(op, "k", k, "[batch, length, kv_heads, head_dim]")
    kv_heads = k.shape[2]
    check_shape(op, "k", k, (batch, length, None, head_dim), "[batch, length, kv_heads, head_dim]")
    check_shape(op, "v", v, (batch, length, kv_heads, None),
                "[batch, length, kv_heads, v_head_dim]")
    if heads % kv_heads:
        raise ValueError(f"{op}: kv_heads={kv_heads} must divide heads={heads} (k.shape[2] and "
                         f"q.shape[2])")


def as_jax(tree):
    """Every NumPy array in ``tree`` as a JAX array (other leaves unchanged)."""
    return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree)


def accepts_numpy(fn: Callable) -> Callable:
    """Makes a public op take NumPy arrays as ``jax.numpy`` does: every NumPy-array argument
    becomes a JAX array before ``fn`` runs (so ``.at``, the dtype rules and the result type are
    JAX's). Python scalars and other arguments pass unchanged."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*as_jax(args), **as_jax(kwargs))

    return wrapper


def as_float(x: jax.Array | None) -> jax.Array | None:
    """``x`` as an array, integer and bool inputs promoted to the default float dtype (float32,
    float64 under x64), as ``jax.nn`` does; floating and complex inputs unchanged; None passes."""
    if x is None:
        return None
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return x.astype(jnp.result_type(float))


def as_floats(*xs: jax.Array | None) -> tuple[jax.Array | None, ...]:
    """:func:`as_float` of each argument."""
    return tuple(as_float(x) for x in xs)


def check_bool(op: str, name: str, x: jax.Array) -> None:
    """Raises a TypeError unless ``x`` is a bool array (a float 0/1 mask is refused, not read
    as a choice)."""
    dtype = jnp.asarray(x).dtype
    if dtype != jnp.bool_:
        raise TypeError(f"{op}: {name} must be a bool array, got dtype {dtype}; convert it with "
                        f"{name}.astype(bool) if its nonzero entries mean True")


# --------------------------------------------------------------------------------------------
# Causality under non-finite inputs. A causal op's output at t depends only on inputs up to t,
# also when a later input is NaN or Inf; but a product by a masked (zero) weight, 0 · NaN, is
# NaN. The ops therefore compute on inputs with their non-finite entries zeroed and set NaN
# wherever a non-finite input reaches (the same positions the definition makes non-finite).


def split_nonfinite(x: jax.Array, keep: int, *, allow_neg_inf: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
    """(x with its non-finite entries zeroed, bool ``x.shape[:keep]``: where any entry of the
    trailing axes is non-finite). With ``allow_neg_inf``, -inf counts as finite and stays (a
    log-gate of -inf is a full reset, not a fault)."""
    ok = jnp.isfinite(x)
    if allow_neg_inf:
        ok = ok | (x == -jnp.inf)
    bad = ~jnp.all(ok, axis=tuple(range(keep, x.ndim)))
    return jnp.where(ok, x, jnp.zeros((), x.dtype)), bad


def nonfinite_reach(bad: jax.Array, doc: jax.Array | None, *, causal: bool = True,
                    window: int | None = None) -> jax.Array:
    """Which positions read a bad one. bad: bool [batch, length, ...]; doc: [batch, length]
    canonical document ids (:func:`jaxlm.ops.segments.document_ids`) or None. Position t reads
    s when both are in one document, s <= t (``causal``) and |t - s| < ``window``. O(length):
    only the nearest bad position on each side matters. Returns bool shaped as ``bad``."""
    batch, length = bad.shape[:2]
    lift = lambda a: a.reshape(a.shape + (1,) * (bad.ndim - a.ndim))
    index = lift(jnp.arange(length)[None])
    if doc is None:
        first, last = jnp.zeros((), jnp.int32), jnp.full((), length - 1)
    else:
        new = jnp.concatenate([jnp.ones((batch, 1), bool), doc[:, 1:] != doc[:, :-1]], axis=1)
        end = jnp.concatenate([doc[:, 1:] != doc[:, :-1], jnp.ones((batch, 1), bool)], axis=1)
        pos = jnp.arange(length)[None]
        first = lift(jax.lax.cummax(jnp.where(new, pos, 0), axis=1))
        last = lift(jax.lax.cummin(jnp.where(end, pos, length), axis=1, reverse=True))
    before = jax.lax.cummax(jnp.where(bad, index, -1), axis=1)
    reach = before >= first
    if window is not None:
        reach &= index - before < window
    if not causal:
        after = jax.lax.cummin(jnp.where(bad, index, length), axis=1, reverse=True)
        ahead = after <= last
        if window is not None:
            ahead &= after - index < window
        reach |= ahead
    return reach


def poison(x: jax.Array, reach: jax.Array) -> jax.Array:
    """NaN where ``reach`` (broadcast over x's trailing axes), else x."""
    reach = reach.reshape(reach.shape + (1,) * (x.ndim - reach.ndim))
    return jnp.where(reach, jnp.asarray(jnp.nan, x.dtype), x)


def guard_scan(writes, reads, log_gates, initial_state, doc, keep: int):
    """Non-finite guarding for a causal scan with a state that resets at document starts.

    writes: arrays [batch, length, ...] (or None) that enter the state (keys, values, inputs);
    reads: arrays that only the output at the same position reads (queries, C, a gate z);
    log_gates: like writes, but -inf is a valid entry (a full reset); initial_state:
    [batch, ...] or None; doc: canonical document ids [batch, length] or None; keep: leading
    axes told apart (2: per position; 3: per position and head).

    Returns (writes, reads, log_gates, initial_state) with non-finite entries zeroed, and
    ``finish(out, final)``, which sets NaN where a non-finite input reaches, as the recurrence
    itself would: output t when a read at t is non-finite, or a write or gate at s <= t of t's
    document, or the initial state when t is in the row's first document; the final state when
    such an input is in the last document. ``out``: [batch, length, ...]; ``final``:
    [batch, ...] (its leading ``keep - 1`` axes matching)."""
    def clean(xs, allow_neg_inf=False):
        cleaned, bad = [], None
        for x in xs:
            if x is not None:
                x, b = split_nonfinite(x, keep, allow_neg_inf=allow_neg_inf)
                bad = b if bad is None else bad | b
            cleaned.append(x)
        return cleaned, bad

    writes, write_bad = clean(writes)
    log_gates, gate_bad = clean(log_gates, allow_neg_inf=True)
    reads, read_bad = clean(reads)
    if gate_bad is not None:
        write_bad = gate_bad if write_bad is None else write_bad | gate_bad
    state_bad = None
    if initial_state is not None:
        initial_state, state_bad = split_nonfinite(initial_state, keep - 1)

    def finish(out, final):
        length = out.shape[1]
        shape = out.shape[:keep]
        write_reach = (jnp.zeros(shape, bool) if write_bad is None
                       else nonfinite_reach(write_bad, doc))
        reach = write_reach if read_bad is None else write_reach | read_bad
        final_bad = write_reach[:, -1] if length else jnp.zeros(final.shape[:keep - 1], bool)
        if state_bad is not None:
            first = jnp.ones(shape[:2], bool) if doc is None else doc == 0
            first = first.reshape(first.shape + (1,) * (keep - 2))
            reach |= state_bad[:, None] & first
            final_bad |= state_bad & (first[:, -1] if length else True)
        return poison(out, reach), poison(final, final_bad)

    return writes, reads, log_gates, initial_state, finish
