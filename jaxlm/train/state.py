"""The train state pytree and the jitted train / eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import optax
from flax import nnx

from jaxlm.train.losses import lm_loss


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes: explicit, a pytree, checkpointable."""
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graph and its parameters, and initialises the optimizer."""
    graphdef, params = nnx.split(model)
    return graphdef, TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                opt_state=tx.init(params))


def _model_loss(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"))
    return lm_loss(logits, batch["targets"])


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A jitted ``(state, batch) -> (state, metrics)``; the input state's buffers are donated."""

    def train_step(state: TrainState, batch: dict[str, Any]):
        grad_fn = jax.value_and_grad(lambda p: _model_loss(graphdef, p, batch), has_aux=True)
        (_, metrics), grads = grad_fn(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[nnx.State, dict], dict]:
    """A jitted ``(params, batch) -> metrics``."""
    return jax.jit(lambda params, batch: _model_loss(graphdef, params, batch)[1])
