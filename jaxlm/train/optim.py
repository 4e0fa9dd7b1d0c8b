"""Optimizer and learning-rate schedule from a :class:`~jaxlm.config.TrainConfig` (optax)."""

from __future__ import annotations

import jax
import optax


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


def _decay_mask(params):
    """Weight decay on matrices only (not on norm scales or biases)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW ("Decoupled Weight Decay Regularization") with global-norm clipping."""
    adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                        weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
