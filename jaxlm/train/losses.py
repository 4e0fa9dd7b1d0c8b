"""Token-level losses and metrics that skip ``IGNORE`` targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm.data import IGNORE


def lm_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over the targets that are not ``IGNORE``.

    logits: [batch, length, vocab]; targets: [batch, length] int (IGNORE = skipped).
    Returns (loss, {"loss", "accuracy", "tokens"}); accuracy is argmax == target on the
    counted positions.
    """
    valid = targets != IGNORE
    safe = jnp.where(valid, targets, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.where(valid, losses, 0.0).sum() / count
    correct = (jnp.argmax(logits, axis=-1) == safe) & valid
    return loss, {"loss": loss, "accuracy": correct.sum() / count, "tokens": valid.sum()}


def regression_loss(predictions: jax.Array, targets: jax.Array, mask: jax.Array
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean squared error over the positions where ``mask`` is True.

    predictions, targets: [batch, length] float; mask: [batch, length] bool.
    Returns (loss, {"loss", "tokens"}).
    """
    count = jnp.maximum(mask.sum(), 1)
    loss = jnp.where(mask, jnp.square(predictions - targets), 0.0).sum() / count
    return loss, {"loss": loss, "tokens": mask.sum()}


def logits_and_targets(outputs: jax.Array | dict, batch: dict[str, jax.Array]
                       ) -> tuple[jax.Array, jax.Array]:
    """A token model's (logits, targets): the batch's targets for logits aligned with the
    inputs, or the model's own for models that predict in another layout (word-level byte
    models return ``{"logits", "targets"}``)."""
    if isinstance(outputs, dict):
        return outputs["logits"], outputs.get("targets", batch["targets"])
    return outputs, batch["targets"]


def batch_loss(outputs: jax.Array | dict, batch: dict[str, jax.Array]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of a batch of any task: squared error for continuous tasks (their batches carry
    a ``mask``), token cross-entropy otherwise. A model returning a dict may add an
    ``aux_loss`` (a regulariser, added to the loss) and ``metrics`` (logged)."""
    if "mask" in batch:
        return regression_loss(outputs, batch["targets"], batch["mask"])
    loss, metrics = lm_loss(*logits_and_targets(outputs, batch))
    if isinstance(outputs, dict):
        metrics = {**metrics, **outputs.get("metrics", {})}
        if "aux_loss" in outputs:
            loss = loss + outputs["aux_loss"]
            metrics["aux_loss"] = outputs["aux_loss"]
    return loss, metrics
