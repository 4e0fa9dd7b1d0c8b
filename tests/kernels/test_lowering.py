"""The kernels lower for real backends, checked on a CPU host: ``jit(...).lower`` with
``lowering_platforms`` runs Pallas' Mosaic TPU lowering and (where this JAX has it) its Triton
lowering, forward and backward kernels, at production-like shapes (head_dim 64, chunks of 64,
bfloat16 inputs; the TPU kernels also at head dim 128 and 1K / 64K tokens). This catches primitives or block shapes a backend cannot take; the final
device compile (libtpu, the Triton compiler) still needs the device."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from jaxlm.kernels import backend
from jaxlm.kernels.delta_rule import gated_delta_rule
from jaxlm.kernels.flash_attention import flash_attention
from jaxlm.kernels.linear_attention import gated_linear_attention
from jaxlm.kernels.selective_scan import selective_scan

PLATFORMS = ["tpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not backend.triton_available(), reason="this JAX has no Triton lowering"))]
B, H, L, D = 2, 4, 256, 64


def gpu_target(platform):
    """From JAX 0.12 the Triton lowering reads the GPU it compiles for from an abstract
    device when the host has none; an H100 stands in for it (earlier JAX does not ask)."""
    if platform == "tpu" or not hasattr(jax.sharding, "AbstractDevice"):
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132,
                                         platform="gpu")
    mesh = jax.sharding.AbstractMesh((), (), abstract_device=device)
    return jax.sharding.use_abstract_mesh(mesh)


def spec(*shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype)




def chunked_kernels(d, *, length=L, heads=H):
    """name -> (kernel(*args, platform) -> tuple of outputs, argument specs, differentiable
    args) for the chunked recurrences at head dim ``d``."""
    state = spec(B, heads, d, d, dtype=jnp.float32)
    starts = spec(B, length, dtype=jnp.bool_)
    qkv = (spec(B, heads, length, d),) * 3
    return {
        "gla_per_head": (lambda *a, platform: gated_linear_attention(*a, platform=platform),
                         (*qkv, spec(B, heads, length, 1, dtype=jnp.float32), starts, state),
                         (0, 1, 2, 3, 5)),
        "gla_per_channel": (lambda *a, platform: gated_linear_attention(
                                *a, chunk=16, platform=platform),
                            (*qkv, spec(B, heads, length, d, dtype=jnp.float32), starts, state),
                            (0, 1, 2, 3, 5)),
        "delta_rule": (lambda *a, platform: gated_delta_rule(*a, platform=platform),
                       (*qkv, spec(B, heads, length), spec(B, heads, length), starts, state),
                       (0, 1, 2, 3, 4, 6)),
        "selective_scan": (lambda *a, platform: selective_scan(*a, platform=platform),
                           (spec(B, length, 256), spec(B, length, 256),
                            spec(256, 16, dtype=jnp.float32), spec(B, length, 16),
                            spec(B, length, 16), starts,
                            spec(B, 256, 16, dtype=jnp.float32)), (0, 1, 2, 3, 4, 6)),
    }


# name -> (kernel(*args, platform) -> tuple of outputs, argument specs, differentiable args)
KERNELS = {
    **chunked_kernels(D),
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
    assert ("tpu_custom_call" if platform == "tpu" else "xla.gpu.triton") in text


@pytest.mark.parametrize("length", [1024, 65536])
@pytest.mark.parametrize("name", sorted(chunked_kernels(128)))
def test_tpu_kernels_lower_at_1k_and_64k(name, length):
    """Head dim 128, bfloat16: the chunk-pipelined kernels lower to Mosaic at any length (their
    blocks are one chunk, so the length only sets the grid)."""
    kernel, args, diff = chunked_kernels(128, length=length, heads=2)[name]
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
