"""Optimizer and learning-rate schedule from a :class:`~jaxlm.config.TrainConfig` (optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def make_schedule(cfg) -> optax.Schedule:
    """The learning rate at each step, from optax pieces joined at the phase boundaries.

    Every schedule starts with a linear warm-up of ``warmup_steps`` (a warm-up as long as the
    run is cut to ``steps - 1``, so a short trial run of a long config works), then:

    - ``cosine`` / ``linear``: decay from ``learning_rate`` to ``learning_rate *
      final_lr_fraction`` at the last step; ``constant``: stay at ``learning_rate``.
    - ``wsd`` (warmup-stable-decay, "MiniCPM: Unveiling the Potential of Small Language Models
      with Scalable Training Strategies"): ``learning_rate`` until the last ``decay_fraction``
      of the steps, then a linear decay to the final rate.
    - ``power`` ("Power Scheduler: A Batch Size and Token Number Agnostic Learning Rate
      Scheduler"): the stable phase follows lr(n) = min(η_max, β · a · n^b) in the number of
      tokens seen n = step · ``power_tokens_per_step`` (β = ``batch_size``, η_max =
      ``learning_rate``, a = ``power_a``, b = ``power_b``; the paper's a = 4, b = −0.51), the
      warm-up rises linearly to lr(n) at its end, and the last ``decay_fraction`` of the steps
      decays linearly from there to ``learning_rate * final_lr_fraction``.
    """
    peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, cfg.steps - 1)
    end = peak * cfg.final_lr_fraction
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, cfg.steps, end_value=end)
    if cfg.schedule in ("wsd", "power"):
        return _stable_then_decay(cfg, warmup, end)
    decay_steps = max(cfg.steps - warmup, 1)
    after = (optax.constant_schedule(peak) if cfg.schedule == "constant"
             else optax.linear_schedule(peak, end, decay_steps))
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), after],
                                [warmup])


def power_lr(cfg, step) -> jax.Array:
    """The power scheduler's lr(n) = min(learning_rate, batch_size · a · n^b) after ``step``
    steps (n = step · tokens per step; n ≥ 1)."""
    tokens = max(cfg.power_tokens_per_step, 0) or cfg.batch_size
    n = jnp.maximum(jnp.asarray(step, jnp.float32) * tokens, 1.0)
    return jnp.minimum(cfg.learning_rate, cfg.batch_size * cfg.power_a * n ** cfg.power_b)


def _stable_then_decay(cfg, warmup: int, end: float) -> optax.Schedule:
    decay_start = max(cfg.steps - max(round(cfg.decay_fraction * cfg.steps), 1), warmup)
    if cfg.schedule == "wsd":
        top, stable = cfg.learning_rate, optax.constant_schedule(cfg.learning_rate)
    else:  # join_schedules hands each piece the steps since its boundary
        top = float(power_lr(cfg, warmup))
        stable = lambda count: power_lr(cfg, count + warmup)
    decay_from = float(power_lr(cfg, decay_start)) if cfg.schedule == "power" else top
    return optax.join_schedules(
        [optax.linear_schedule(0.0, top, max(warmup, 1)), stable,
         optax.linear_schedule(decay_from, end, max(cfg.steps - decay_start, 1))],
        [warmup, decay_start])


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
