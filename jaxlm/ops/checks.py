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
