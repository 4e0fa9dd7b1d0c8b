"""Which Pallas lowering a kernel call uses, and the error when there is none.

* TPU: the Mosaic kernels of :mod:`jaxlm.kernels.tpu` (grids pipelined along the sequence).
  ``interpret=True`` on a CPU host runs these same kernels in Pallas' TPU interpret mode
  (simulated VMEM, DMAs and semaphores): what the CPU test suite checks.
* GPU: the portable whole-row kernels through the Triton lowering, where the installed JAX
  still ships it (``jax.experimental.pallas.triton``); ``platform="gpu"`` with
  ``interpret=True`` runs them in the plain interpreter. Without Triton ``impl="pallas"``
  raises on GPU.
* GPU, Mosaic GPU (Hopper): hand-placed ``wgmma`` / TMA kernels in
  :mod:`jaxlm.kernels.mosaic_gpu` (so far: GLA / SSD with per-head or per-channel decay, the
  gated delta rule, Mamba's selective scan, the block-sparse flash attention forward;
  :func:`mosaic_gpu_available`,
  :func:`mosaic_gpu_takes`), tested in Mosaic GPU's interpreter.
* CPU without ``interpret``: raises (Pallas compiles for CPU only through the interpreter).
"""

from __future__ import annotations

import importlib.util

import jax


def triton_available() -> bool:
    """Whether the installed JAX still has Pallas' Triton lowering."""
    return importlib.util.find_spec("jax.experimental.pallas.triton") is not None


def target_platform(platform: str | None, interpret) -> str:
    """The hardware a kernel call is built for: "tpu" or "gpu" (``platform``, default JAX's
    default backend; "cuda" and "rocm" are "gpu"). An interpreted call on a CPU host targets
    the TPU kernels, which TPU interpret mode simulates."""
    platform = platform or jax.default_backend()
    if platform in ("gpu", "cuda", "rocm"):
        return "gpu"
    if platform == "cpu" and interpret:
        return "tpu"
    return platform


def mosaic_gpu_available() -> bool:
    """Whether the installed JAX has Pallas' Mosaic GPU front end (``plgpu.kernel``, ``wgmma``),
    which :mod:`jaxlm.kernels.mosaic_gpu` needs (JAX >= 0.10)."""
    if importlib.util.find_spec("jax.experimental.pallas.mosaic_gpu") is None:
        return False
    from jaxlm.kernels.mosaic_gpu import compat

    return compat.mosaic_gpu_available()


def mosaic_gpu_takes(q, k, v, state, chunk: int, interpret, platform: str | None) -> bool:
    """The conditions every Mosaic GPU (Hopper) kernel of :mod:`jaxlm.kernels.mosaic_gpu`
    shares, for a kernel call to go there rather than to the portable kernels: compiled (not
    interpreted) for a GPU, q, k, v of one 16-bit dtype with head dims (q's and v's last)
    multiples of 64 up to 256, a float32 state, chunks of 64, and a JAX with Mosaic GPU."""
    if interpret or target_platform(platform, interpret) != "gpu":
        return False
    dims_ok = all(d % 64 == 0 and d <= 256 for d in (q.shape[-1], v.shape[-1]))
    return (chunk == 64 and dims_ok and state.dtype == jax.numpy.float32
            and q.dtype == k.dtype == v.dtype
            and q.dtype in (jax.numpy.bfloat16, jax.numpy.float16) and mosaic_gpu_available())


def compiler_params(kernel: str, interpret: bool, grid_rank: int, *,
                    platform: str | None = None, num_warps: int = 4, num_stages: int = 2):
    """Compiler parameters for ``pallas_call`` on ``platform`` (default: JAX's default backend).

    Returns None in interpret mode. Raises a ValueError naming ``kernel`` and the backend when
    the kernel cannot be compiled there.
    """
    if interpret:
        return None
    platform = platform or jax.default_backend()
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank)
    if platform in ("gpu", "cuda", "rocm"):
        if not triton_available():
            raise ValueError(
                f"{kernel}: impl='pallas' has no GPU lowering in this JAX "
                f"({jax.__version__}): its kernels use the Triton lowering, which this JAX no "
                "longer ships, and jaxlm's Mosaic GPU kernels (GLA / SSD and the gated delta rule "
                "with 16-bit q, k, v, head dims multiples of 64 and chunks of 64; the selective "
                "scan with d_inner a multiple of 64, d_state a multiple of 8 up to 32 and chunks "
                "of 16; flash attention with 16-bit q, k, v, head dims 64 or 128, blocks a "
                "multiple of 64 and no window) do not take this call; use impl='xla'")
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    raise ValueError(f"{kernel}: impl='pallas' cannot compile for backend {platform!r}; pass "
                     "interpret=True to run the kernel in Pallas' interpreter, or use "
                     "impl='xla'")
