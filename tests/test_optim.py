"""Non-finite updates (issue #10 part 4): by default training stops naming the step and the
last good checkpoint; with `optim.skip_nonfinite_updates` the update is skipped (optax
`apply_if_finite`), counted in metrics.jsonl, and training stops after more than
`optim.max_consecutive_nonfinite_updates` in a row.

The non-finite gradient is injected as NaN heatmap targets: at the step level on a hand
batch, and in a whole in-process `train.run` by wrapping the function that places each
batch on the mesh (the run's n-th call is step n).
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import fault_injection_model
from configs import common
from configs import default
from jaxpose import mesh as mesh_lib
from jaxpose import models
from jaxpose import optim
from jaxpose import step as step_lib
from jaxpose import train
from jaxpose.errors import TrainingDiverged, UserError


def _optim_config(skip: bool, limit: int = 2):
  c = default.get_config("smoke")
  c.optim = common.adam_step_schedule(base_lr=1e-2, base_batch_size=2)
  c.optim.skip_nonfinite_updates = skip
  c.optim.max_consecutive_nonfinite_updates = limit
  return c


def _batch(nan_targets: bool):
  rng = np.random.default_rng(0)
  heatmaps = rng.random((2, 8, 8, 3)).astype(np.float32)
  if nan_targets:
    heatmaps[1, 2, 3, 0] = np.nan  # one pixel of one target: every gradient becomes NaN
  return dict(image=jnp.asarray(rng.integers(0, 255, (2, 32, 32, 3)), jnp.uint8),
              heatmaps=jnp.asarray(heatmaps), target_weight=jnp.ones((2, 3), jnp.float32))


@pytest.fixture(scope="module")
def skipping_step():
  """(initial state, jitted train step) of the tiny model, skipping up to 2 in a row."""
  model = fault_injection_model.TinyPoseNet(num_keypoints=3, num_deconv_filters=(4,))
  tx = optim.build_optimizer(_optim_config(skip=True, limit=2), optax.constant_schedule(1e-2))
  init = jax.jit(lambda rng: step_lib.create_train_state(model, tx, rng, input_hw=(32, 32)))
  train_step = jax.jit(chex.assert_max_traces(step_lib.make_train_step(model, tx), n=1))
  return init(jax.random.key(0)), train_step


def _copy(tree):
  return jax.tree.map(np.array, tree)


def test_skipped_update_leaves_params_statistics_and_moments_unchanged(skipping_step):
  state, train_step = skipping_step
  state, metrics = train_step(state, _batch(nan_targets=False), jax.random.key(1))
  assert float(metrics["nonfinite_streak"]) == 0
  before = _copy(state)
  for streak in (1, 2):  # skipped: up to the limit in a row
    state, metrics = train_step(state, _batch(nan_targets=True), jax.random.key(1))
    assert not np.isfinite(float(metrics["loss_sum"]))
    assert float(metrics["nonfinite_streak"]) == streak
    chex.assert_trees_all_equal((state.params, state.batch_stats, state.opt_state.inner_state),
                                (before.params, before.batch_stats, before.opt_state.inner_state))
    assert int(state.step) == int(before.step) + streak
  state, metrics = train_step(state, _batch(nan_targets=True), jax.random.key(1))
  assert float(metrics["nonfinite_streak"]) == 3  # beyond the limit optax applies it
  assert not all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_finite_update_after_a_skip_resets_the_streak(skipping_step):
  state, train_step = skipping_step
  state, _ = train_step(state, _batch(nan_targets=True), jax.random.key(1))
  before = _copy(state.params)
  state, metrics = train_step(state, _batch(nan_targets=False), jax.random.key(1))
  assert float(metrics["nonfinite_streak"]) == 0
  assert int(state.opt_state.total_notfinite) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params, before)
  assert all(jax.tree.leaves(changed))


def test_without_the_switch_the_optimiser_is_unwrapped():
  # Checkpoints of runs without the switch keep their optimiser-state layout.
  tx = optim.build_optimizer(_optim_config(skip=False), optax.constant_schedule(1e-2))
  opt_state = tx.init({"w": jnp.zeros(2)})
  plain_adam = optax.adam(optax.constant_schedule(1e-2))
  chex.assert_trees_all_equal_structs(opt_state, plain_adam.init({"w": jnp.zeros(2)}))
  assert int(optim.nonfinite_streak(opt_state)) == 0


def test_a_limit_below_one_is_refused():
  with pytest.raises(UserError, match="optim.max_consecutive_nonfinite_updates: 0 skips nothing"):
    optim.build_optimizer(_optim_config(skip=True, limit=0), optax.constant_schedule(1e-2))


# ------------------------------------------------------------------ the whole train loop


def _run_config(cache_dir, **optim_overrides):
  """The smoke config with the tiny model at 32x32, batch 2, 8 steps, all checkpoints kept."""
  c = default.get_config("smoke")
  c.model.name = fault_injection_model.NAME
  c.data.synthetic.cache_dir = str(cache_dir)
  c.input.size_hw, c.input.batch_size = (32, 32), 2
  c.train.total_steps = 8
  c.train.keep_checkpoints = 10
  c.optim.update(optim_overrides)
  return c


@pytest.fixture
def nan_targets_at(monkeypatch):
  """Registers the tiny model; returns `inject(steps)`, which makes those steps' targets NaN."""
  monkeypatch.setitem(models.MODELS, fault_injection_model.NAME, fault_injection_model.TinyPoseNet)
  monkeypatch.setitem(models.KINDS, fault_injection_model.NAME, "topdown")

  def inject(steps):
    put_batch, calls = mesh_lib.put_batch, []

    def put_batch_with_nan(local_batch, mesh):
      calls.append(1)
      if len(calls) in steps:
        local_batch = dict(local_batch, heatmaps=np.full_like(local_batch["heatmaps"], np.nan))
      return put_batch(local_batch, mesh)

    monkeypatch.setattr(mesh_lib, "put_batch", put_batch_with_nan)

  return inject


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _restore(workdir, step):
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(checkpointer.metadata(path).item_metadata))
  return checkpointer.restore(path, target)


def test_default_stops_at_the_first_nonfinite_step_naming_the_last_good_checkpoint(
    tmp_path, synthetic_cache, nan_targets_at):
  # Rows every 4 steps, checkpoints every 3: the NaN at step 5 is found at the checkpoint
  # of step 6, which is therefore not written, and named by its own step.
  config = _run_config(synthetic_cache)
  config.train.log_every_steps, config.train.checkpoint_every_steps = 4, 3
  nan_targets_at({5})
  with pytest.raises(TrainingDiverged) as raised:
    train.run(config, tmp_path, mode="train")
  assert str(raised.value) == (f"non-finite loss (nan) or gradient norm (nan) at step 5; last "
                               f"good checkpoint: {tmp_path}/checkpoints/3")
  committed = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert committed == [3]
  assert [r["step"] for r in _rows(tmp_path)] == [4]


def test_skip_switch_skips_counts_and_stops_after_the_limit(tmp_path, synthetic_cache,
                                                            nan_targets_at):
  config = _run_config(synthetic_cache, skip_nonfinite_updates=True,
                       max_consecutive_nonfinite_updates=2)
  config.train.log_every_steps = config.train.checkpoint_every_steps = 1
  nan_targets_at({3, 4, 6, 7, 8})
  with pytest.raises(TrainingDiverged) as raised:
    train.run(config, tmp_path, mode="train")
  assert str(raised.value) == (
      f"non-finite loss (nan) or gradient norm (nan) at step 8, 3 in a row (more than "
      f"optim.max_consecutive_nonfinite_updates = 2); last good checkpoint: "
      f"{tmp_path}/checkpoints/7")
  rows = _rows(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
  assert [r["nonfinite_updates_skipped"] for r in rows] == [0, 0, 1, 1, 0, 1, 1]
  assert [r["loss"] == "nan" for r in rows] == [False, False, True, True, False, True, True]
  # A skipped step changes nothing but the step counter: params, BatchNorm statistics and
  # Adam's state after steps 3 and 4 are those after step 2; step 5 trains again.
  states = {step: _restore(tmp_path, step) for step in (2, 3, 4, 5)}
  unchanged = lambda s: (s["params"], s["batch_stats"], s["opt_state"]["inner_state"])
  for step in (3, 4):
    chex.assert_trees_all_equal(unchanged(states[step]), unchanged(states[2]))
  skipped_so_far = [int(states[step]["opt_state"]["total_notfinite"]) for step in (2, 3, 4, 5)]
  assert skipped_so_far == [0, 1, 2, 2]
  assert not np.array_equal(states[5]["params"]["final_layer"]["kernel"],
                            states[2]["params"]["final_layer"]["kernel"])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_restore(tmp_path, 7)["params"]))
