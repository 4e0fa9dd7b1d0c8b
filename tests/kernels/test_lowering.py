"""The kernels lower for real backends, checked on a CPU host: ``jit(...).lower`` with
``lowering_platforms`` runs Pallas' Mosaic TPU lowering and (where this JAX has it) its Triton
lowering, forward and backward kernels, at production-like shapes (head_dim 64, chunks of 64,
bfloat16 inputs; the TPU kernels also at head dim 128 and 1K / 64K tokens). This catches primitives or block shapes a backend cannot take; the final
device compile (libtpu, the Triton compiler) still needs the device."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from jaxlm.kernels import backend, vmem
from jaxlm.kernels.flash_attention import flash_attention

PLATFORMS = ["tpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not backend.triton_available(), reason="this JAX has no Triton lowering"))]
B, H, L, D = 2, 4, 256, 64


def gpu_target(platform):
    """From JAX 0.12 the Triton lowering reads the GPU it compiles for from an abstract
    device when the host has none; an H100 stands in for it (earlier JAX does not ask)."""
    if platform == "tpu" or not hasattr(jax.sharding, "AbstractDevice"):
        return contextlib.nullcontext()
    try:
        device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132,
                                             platform="gpu")
    except TypeError:  # JAX 0.10.0's abstract devices name no platform
        return contextlib.nullcontext()
    mesh = jax.sharding.AbstractMesh((), (), abstract_device=device)
    return jax.sharding.use_abstract_mesh(mesh)


def spec(*shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype)




# name -> (kernel(*args, platform) -> tuple of outputs, argument specs, differentiable args)
KERNELS = {
    **vmem.kernel_cases(L, head_dim=D, batch=B, heads=H),
    "flash_attention": (lambda *a, platform: (flash_attention(
                            *a, window=100, block_mask=jnp.ones((1, H, 2, 2), bool),
                            platform=platform),),
                        (spec(B, L, H, D), spec(B, L, 2, D), spec(B, L, 2, D)), (0, 1, 2)),
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_forward_and_backward_kernels_lower(name, platform):
    kernel, args, diff = KERNELS[name]

    def loss(*a):
        return sum(jnp.sum(out.astype(jnp.float32)) for out in kernel(*a, platform=platform))

    with gpu_target(platform):
        lowered = jax.jit(jax.grad(loss, argnums=diff)).trace(*args).lower(
            lowering_platforms=(platform,))
    text = lowered.as_text()
    if platform == "tpu":
        assert "tpu_custom_call" in text
    elif (name in ("gla_per_head", "delta_rule", "selective_scan")
          and backend.mosaic_gpu_available()):  # Hopper
        assert text.count("mosaic_gpu") >= 2
    else:
        assert "xla.gpu.triton" in text


@pytest.mark.parametrize("length", [1024, 65536])
@pytest.mark.parametrize("name", sorted(vmem.kernel_cases(8)))
def test_tpu_kernels_lower_at_1k_and_64k(name, length):
    """Head dim 128, bfloat16: the chunk-pipelined kernels lower to Mosaic at any length (their
    blocks are one chunk, so the length only sets the grid)."""
    kernel, args, diff = vmem.kernel_cases(length)[name]
    loss = lambda *a: sum(jnp.sum(o.astype(jnp.float32)) for o in kernel(*a, platform="tpu"))
    text = jax.jit(jax.grad(loss, argnums=diff)).trace(*args).lower(
        lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") >= 2


def test_cpu_needs_interpret_mode():
    with pytest.raises(ValueError, match="cannot compile for backend 'cpu'; pass interpret"):
        backend.compiler_params("flash_attention", False, 3, platform="cpu")
    assert backend.compiler_params("flash_attention", True, 3, platform="cpu") is None


def test_gpu_without_triton_names_the_missing_lowering(monkeypatch):
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="no GPU lowering in this JAX"):
        backend.compiler_params("selective_scan", False, 1, platform="gpu")
