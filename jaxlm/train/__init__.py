"""Training: train state, optax optimizer, jitted steps, the loop, orbax checkpoints, metrics."""

from jaxlm.train.checkpoint import CheckpointError, Checkpointer, CheckpointWarning
from jaxlm.train.loop import (NonFiniteTraining, TrainResult, build_model, environment,
                              evaluate_params, train)
from jaxlm.train.losses import lm_loss
from jaxlm.train.metrics import MetricWriter, read_metrics
from jaxlm.train.optim import make_optimizer, make_schedule
from jaxlm.train.rundir import RunDirBusy, RunLock
from jaxlm.train.signals import PREEMPTED_EXIT, StopRequests, TrainingInterrupted
from jaxlm.train.stacked import group_stackable, train_stacked
from jaxlm.train.state import (TrainState, init_train_state, make_eval_step, make_train_step,
                               merge_model)

__all__ = ["CheckpointError", "CheckpointWarning", "Checkpointer", "MetricWriter",
           "NonFiniteTraining", "PREEMPTED_EXIT", "RunDirBusy", "RunLock", "StopRequests",
           "TrainResult", "TrainState", "TrainingInterrupted", "build_model", "environment",
           "evaluate_params", "group_stackable", "init_train_state", "lm_loss",
           "make_eval_step", "make_optimizer", "make_schedule", "make_train_step",
           "merge_model", "read_metrics", "train", "train_stacked"]
