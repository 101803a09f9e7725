"""Optimiser and learning-rate schedule from the config's intent (optax)."""

import ml_collections
import optax

from jaxpose.errors import UserError

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd}


def resolve_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, tuple[int, ...]]:
  """Total steps and lr-decay boundaries, from `*_steps` or `*_epochs` (exactly one is set)."""
  train, optim = config.train, config.optim
  if (train.total_steps is None) == (train.total_epochs is None):
    raise UserError("config keys train.total_steps / train.total_epochs: set exactly one")
  if train.total_steps is not None:
    total = int(train.total_steps)
  else:
    total = int(round(train.total_epochs * steps_per_epoch))
  if optim.decay_steps is not None and optim.decay_epochs is not None:
    raise UserError("config keys optim.decay_steps / optim.decay_epochs: set at most one")
  if optim.decay_epochs is not None:
    boundaries = tuple(int(round(e * steps_per_epoch)) for e in optim.decay_epochs)
  else:
    boundaries = tuple(int(s) for s in (optim.decay_steps or ()))
  return total, boundaries


def learning_rate_schedule(config: ml_collections.ConfigDict, global_batch_size: int,
                           boundaries: tuple[int, ...]) -> optax.Schedule:
  """Step schedule: base_lr scaled linearly from base_batch_size, times decay_factor at each
  boundary, after an optional linear warmup."""
  optim = config.optim
  lr = optim.base_lr * global_batch_size / optim.base_batch_size
  schedule = optax.piecewise_constant_schedule(
      lr, {int(b): optim.decay_factor for b in boundaries})
  if optim.warmup_steps > 0:
    warmup = optax.linear_schedule(0.0, lr, optim.warmup_steps)
    schedule = optax.join_schedules([warmup, schedule], [optim.warmup_steps])
  return schedule


def build_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                    ) -> optax.GradientTransformation:
  name = config.optim.name
  if name not in OPTIMIZERS:
    raise UserError(f"config key optim.name: unknown optimiser {name!r}; known: {sorted(OPTIMIZERS)}")
  return OPTIMIZERS[name](learning_rate=schedule)
