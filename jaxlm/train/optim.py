"""Optimizer and learning-rate schedule from a :class:`~jaxlm.config.TrainConfig` (optax)."""

from __future__ import annotations

import jax
import optax
from flax import nnx


def make_schedule(cfg) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine / linear decay or a constant. A warm-up
    as long as the run is cut to ``steps - 1`` (a short trial run of a long config works)."""
    peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, cfg.steps - 1)
    end = peak * cfg.final_lr_fraction
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, cfg.steps, end_value=end)
    decay_steps = max(cfg.steps - warmup, 1)
    after = (optax.constant_schedule(peak) if cfg.schedule == "constant"
             else optax.linear_schedule(peak, end, decay_steps))
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), after],
                                [warmup])


def decay_mask(params):
    """Which parameters weight decay applies to: matrices (not norm scales or biases), except
    those a layer marks ``nnx.Param(..., weight_decay=False)`` (e.g. Mamba's A_log and D, as
    the reference implementations exclude them). A pytree of bools over the ``nnx.Param``
    variables of ``params``."""
    def decays(variable):
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        marked = (variable.get_metadata().get("weight_decay", True)
                  if isinstance(variable, nnx.Variable) else True)
        return bool(marked) and value.ndim >= 2
    return jax.tree.map(decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW ("Decoupled Weight Decay Regularization") with global-norm clipping."""
    adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
