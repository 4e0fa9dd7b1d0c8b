"""What the Mosaic GPU kernel tests share: the skip markers, the loss whose gradients they
compare (a weighted sum of the output and the final state, in float64), the gradient check,
and race detection around a kernel call in Mosaic GPU's interpreter."""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from jaxlm.kernels import backend
from tests.helpers import rel_err

needs_mosaic_gpu = pytest.mark.skipif(not backend.mosaic_gpu_available(),
                                      reason="this JAX has no Mosaic GPU Pallas front end")
ON_GPU = jax.default_backend() == "gpu"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU")


def state_loss(fn, weights, starts):
    """loss(*inputs, state) = Σ out · w_out + Σ final · w_state in float64, of
    (out, final) = fn(*inputs, starts, state): the recurrent ops' argument order, with the
    document starts fixed and the differentiable inputs first, the initial state last."""
    w_out, w_state = weights

    def loss(*args):
        out, final = fn(*args[:-1], starts, args[-1])
        return (jnp.sum(out.astype(jnp.float64) * w_out)
                + jnp.sum(final.astype(jnp.float64) * w_state))

    return loss


def gradients(fn, weights, starts, inputs, *, jit=False):
    """The gradients of :func:`state_loss` with respect to every one of ``inputs``."""
    grad = jax.grad(state_loss(fn, weights, starts), argnums=range(len(inputs)))
    return (jax.jit(grad) if jit else grad)(*inputs)


def assert_gradients_close(grads, ref, names, tol, *, finite=True):
    """Each gradient within ``tol`` (relative) of the reference's, and finite."""
    for name, g, r in zip(names, grads, ref, strict=True):
        if finite:
            assert bool(jnp.all(jnp.isfinite(g))), name
        assert rel_err(g, r) < tol, name


@contextlib.contextmanager
def no_races():
    """Race detection on for the interpreted kernels run inside; fails if it found one."""
    from jaxlm.kernels.mosaic_gpu import compat

    compat.reset_races()
    yield
    assert not compat.races_found()
