"""The train state pytree and the jitted train / eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import optax
from flax import nnx

from jaxlm.train.losses import batch_loss
from jaxlm.train.meap import mask_inputs


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes: explicit, a pytree, checkpointable.

    ``params`` are the trained ``nnx.Param`` leaves; ``variables`` every other model variable
    (state a forward pass in training mode updates, e.g. routing attention's k-means centroids),
    which the optimizer never touches.
    """
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    variables: nnx.State


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation
                     ) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graph, its parameters and its other variables, and
    initialises the optimizer."""
    graphdef, params, variables = nnx.split(model, nnx.Param, ...)
    return graphdef, TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                opt_state=tx.init(params), variables=variables)


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """The model of a train state (in evaluation mode)."""
    return nnx.merge(graphdef, state.params, state.variables)


def _model_loss(graphdef, states, batch, *, training: bool):
    """Loss and metrics of the model ``nnx.merge(graphdef, *states)``; in training mode also
    the non-parameter variables the forward pass updated."""
    model = nnx.merge(graphdef, *states, copy=True)
    if training:
        model.train()
    outputs = model(batch["inputs"], segment_ids=batch.get("segment_ids"))
    loss, metrics = batch_loss(outputs, batch)
    return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    input_mask_rate: float = 0.0, input_mask_token: int = 0,
                    mask_key: jax.Array | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A jitted ``(state, batch) -> (state, metrics)``; the input state's buffers are donated.
    With ``input_mask_rate > 0`` (MEAP, :func:`jaxlm.train.meap.mask_inputs`) the inputs of
    step s are masked with the key ``fold_in(mask_key, s)``."""

    def train_step(state: TrainState, batch: dict[str, Any]):
        if input_mask_rate:
            batch = {**batch, "inputs": mask_inputs(jax.random.fold_in(mask_key, state.step),
                                                    batch["inputs"], input_mask_rate,
                                                    input_mask_token)}
        loss_fn = lambda p: _model_loss(graphdef, (p, state.variables), batch, training=True)
        (_, (metrics, variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                          variables=variables), metrics

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef: nnx.GraphDef
                   ) -> Callable[[tuple[nnx.State, ...], dict], dict]:
    """A jitted ``(states, batch) -> metrics`` for the model ``nnx.merge(graphdef, *states)``,
    e.g. ``states = (train_state.params, train_state.variables)``; evaluation mode."""
    return jax.jit(lambda states, batch: _model_loss(graphdef, states, batch,
                                                     training=False)[1][0])
