"""Optimiser and learning-rate schedule from the config's intent (optax)."""

import jax
import jax.numpy as jnp
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
  """The named optimiser; with `optim.skip_nonfinite_updates`, wrapped in
  `optax.apply_if_finite`, which drops an update whose gradients hold a NaN or Inf (params
  and moments stay as they were; the schedule's count does not advance) up to
  `optim.max_consecutive_nonfinite_updates` times in a row, then applies it."""
  optim = config.optim
  if optim.name not in OPTIMIZERS:
    raise UserError(f"config key optim.name: unknown optimiser {optim.name!r}; "
                    f"known: {sorted(OPTIMIZERS)}")
  tx = OPTIMIZERS[optim.name](learning_rate=schedule)
  if not optim.skip_nonfinite_updates:
    return tx
  if optim.max_consecutive_nonfinite_updates < 1:
    raise UserError(f"config key optim.max_consecutive_nonfinite_updates: "
                    f"{optim.max_consecutive_nonfinite_updates} skips nothing; use >= 1, or "
                    f"optim.skip_nonfinite_updates=False")
  return optax.apply_if_finite(tx, max_consecutive_errors=optim.max_consecutive_nonfinite_updates)


def nonfinite_streak(opt_state: optax.OptState) -> jax.Array:
  """Consecutive non-finite updates up to and including the last one (int32 scalar): 0 after
  a finite update, and always 0 unless the optimiser skips non-finite updates.

  An update with a streak in [1, max_consecutive_nonfinite_updates] was skipped; a larger
  streak means `optax.apply_if_finite` gave up and applied it.
  """
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return opt_state.notfinite_count
  return jnp.zeros((), jnp.int32)
