"""The one place that knows how Mosaic GPU's Pallas API differs between the JAX versions jaxlm
supports (0.10 to 0.12): every kernel in :mod:`jaxlm.kernels.mosaic_gpu` imports ``plgpu`` and
the shims from here.

* ``InterpretGPUParams`` is exported by ``plgpu`` from JAX 0.11; on 0.10 it lives in
  ``jax._src.pallas.mosaic_gpu.interpret.params`` (and its interpreter imports absl-py, which
  jax does not declare).
* ``plgpu.load`` needs an index argument in JAX 0.10 (``load(ref, (), layout=...)``), takes it
  deprecated in 0.11 and none from 0.12 (``load(ref, layout=...)``); the 0.10 interpreter runs neither it nor
  ``layout_cast``, so :func:`load` and :func:`iota` drop layouts when interpreting.
* :func:`kernel` calls ``plgpu.kernel`` with the keywords every version takes (``out_type``,
  ``scratch_types``, ``grid``, ``grid_names``) and asks for Lane lowering semantics (the
  kernels place layouts explicitly): 0.12 defaults to Warpgroup semantics, whose layout
  search does not finish on these kernels.
* JAX 0.12 refuses a register-to-memory store it has no bank-conflict-free plan for (into an
  untransformed SMEM ref, or GMEM) unless it comes through ``plgpu.store(...,
  optimized=False)``, which 0.10 and 0.11 lack: :func:`store`.
* The interpreter's race record (``detect_races``) is read through ``jax._src`` in every
  version: :func:`reset_races`, :func:`races_found`.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import jax

try:  # Mosaic GPU ships with every jax >= 0.10, but guard the import for clear errors.
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:  # pragma: no cover - a JAX without Mosaic GPU's Pallas front end
    plgpu = None


def interpret_params(detect_races: bool = False):
    """Mosaic GPU's interpreter settings (the kernel runs on CPU, threads, barriers and shared
    memory simulated); ``detect_races`` checks every shared-memory access."""
    cls = getattr(plgpu, "InterpretGPUParams", None)
    if cls is None:
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as cls
    if importlib.util.find_spec("absl") is None:
        raise ImportError("Mosaic GPU's interpreter needs absl-py on this JAX "
                          f"({jax.__version__}); pip install absl-py")
    return cls(detect_races=detect_races)


def reset_races() -> None:
    """Clears the interpreter's record of shared-memory races (before a checked run)."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    interpret_pallas_call.reset_gpu_interpret_mode_state()


def races_found() -> bool:
    """Whether a run with ``interpret_params(detect_races=True)`` since :func:`reset_races`
    found a race (the interpreter also prints where)."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    return bool(interpret_pallas_call.get_races().races_found)


def mosaic_gpu_available() -> bool:
    """Whether this JAX has the Mosaic GPU front end the kernels are written against
    (``plgpu.kernel`` taking ``out_type``, ``wgmma``): JAX 0.10.2 and later. JAX 0.10.0 and
    0.10.1 name ``plgpu.kernel``'s arguments otherwise and their interpreter cannot run these
    kernels, so there the GPU path falls back to the Triton-lowered kernels."""
    if plgpu is None or not (hasattr(plgpu, "kernel") and hasattr(plgpu, "wgmma")):
        return False
    return "out_type" in inspect.signature(plgpu.kernel).parameters


def check_available(kernel: str) -> None:
    """Raises a ValueError naming ``kernel`` when this JAX has no Mosaic GPU lowering."""
    if not mosaic_gpu_available():
        raise ValueError(f"{kernel}: this JAX ({jax.__version__}) has no Mosaic GPU Pallas "
                         "front end (jax.experimental.pallas.mosaic_gpu.kernel); use "
                         "impl='xla'")


def kernel(body, *, out_type, scratch_types, grid, grid_names, interpret):
    """``plgpu.kernel`` with the keywords all supported versions share. ``interpret``: None
    (compile for the GPU) or :func:`interpret_params`."""
    params = plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane)
    return plgpu.kernel(body, out_type=out_type, scratch_types=scratch_types, grid=grid,
                        grid_names=grid_names, interpret=interpret, compiler_params=params)


def _load_takes_index() -> bool:
    """Whether ``plgpu.load`` needs its index argument (0.10; 0.11 still takes it, deprecated,
    with a default; 0.12 has none)."""
    idx = inspect.signature(plgpu.load).parameters.get("idx")
    return idx is not None and idx.default is inspect.Parameter.empty


def load(ref, layout, interpret, *, optimized: bool = True) -> jax.Array:
    """The whole of an SMEM ``ref`` as an array in register ``layout`` (a ``plgpu.Layout``).
    ``interpret``: the kernel's interpret argument (None when compiled); interpreted, the ref
    is read plainly (layouts mean nothing to the interpreter, and JAX 0.10's cannot run
    ``plgpu.load`` or ``layout_cast``). ``optimized=False`` for a GMEM ref."""
    if interpret is not None:
        return ref[...]
    if _load_takes_index():
        return plgpu.load(ref, (), layout=layout, optimized=optimized)
    return plgpu.load(ref, layout=layout, optimized=optimized)


def store(ref, value, interpret, *, optimized: bool = True) -> None:
    """``ref[...] = value``. ``optimized=False`` lets JAX 0.12's lowering take a store without
    a bank-conflict-free plan (a register layout into an untransformed SMEM ref); earlier
    versions' ``ref[...] =`` never asks for one (and have no ``plgpu.store``)."""
    if interpret is None and not optimized and hasattr(plgpu, "store"):
        plgpu.store(ref, value, optimized=False)
    else:
        ref[...] = value


def iota(shape, dim, interpret) -> jax.Array:
    """int32 indices along ``dim`` of a WGMMA-layout array of ``shape``."""
    if interpret is not None:
        return jax.lax.broadcasted_iota(jax.numpy.int32, shape, dim)
    return plgpu.broadcasted_iota(jax.numpy.int32, shape, dim, layout=plgpu.Layout.WGMMA)


class T:
    """A transposed SMEM operand of :func:`mma` (``plgpu.transpose_ref`` when compiled)."""

    def __init__(self, ref):
        self.ref = ref


def mma(a, b, shape, interpret) -> jax.Array:
    """a @ b by ``wgmma`` into a zeroed float32 ``shape`` accumulator, awaited and returned.

    a, b: SMEM refs of 16-bit data with :func:`mma_transforms`, or :class:`T` of one (its
    transpose). ``pl.run_scoped`` allocates the accumulator (the interpreters of JAX 0.10-0.12
    do not run ``pl.run_state``, and 0.12's reads no register A operand). Where the
    interpreter cannot take transposed refs (JAX 0.10), the product is taken with ``jnp`` on
    the refs' contents: the same arithmetic, float32 accumulation.
    """
    from jax.experimental import pallas as pl

    def operand(x):
        return plgpu.transpose_ref(x.ref, (1, 0)) if isinstance(x, T) else x

    if interpret is not None and not _interpreter_transposes():
        value = lambda x: x.ref[...].T if isinstance(x, T) else x[...]
        return jax.lax.dot(value(a), value(b), preferred_element_type=jax.numpy.float32)

    def run(acc):
        plgpu.wgmma(acc, operand(a), operand(b))
        return acc[...]

    return pl.run_scoped(run, plgpu.ACC(shape, jax.numpy.float32))


@functools.cache
def _interpreter_transposes() -> bool:
    """Whether Mosaic GPU's interpreter reads transposed refs (JAX 0.10's does not)."""
    from jax._src.pallas.mosaic.interpret import utils

    return "TransposeTransform" in inspect.getsource(utils)


def mma_transforms(dtype) -> tuple:
    """SMEM transforms a 16-bit ``wgmma`` operand needs: (8, 64) tiles, 128-byte swizzle."""
    elems = 128 // jax.numpy.dtype(dtype).itemsize
    return (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(128))


def row_layout():
    """Layout of a [m] vector indexed by the rows of a WGMMA-layout [m, n] array."""
    return plgpu.Layout.WGMMA.reduce(1)


def col_layout():
    """Layout of a [n] vector indexed by the columns of a WGMMA-layout [m, n] array."""
    return plgpu.Layout.WGMMA.reduce(0)
