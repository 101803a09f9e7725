"""The loss, the schedule and the train step's tracing, on hand-checkable numbers."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import common
from jaxpose import optim
from jaxpose import step as step_lib
from jaxpose.errors import UserError


class JointsMseTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_loss(self):
    # One sample, a 1x2 heatmap, two joints; joint 1 unlabelled (weight 0).
    pred = jnp.array([[[[1.0, 5.0], [3.0, 7.0]]]])  # [B=1, h=1, w=2, K=2]
    target = jnp.array([[[[0.0, 0.0], [1.0, 0.0]]]])
    weight = jnp.array([[2.0, 0.0]])
    # joint 0: (2*(1-0))^2 = 4 and (2*(3-1))^2 = 16; joint 1 masked -> 0.
    # 0.5 * mean over 2 pixels x 2 joints of {4, 16, 0, 0} = 0.5 * 5 = 2.5
    loss = self.variant(step_lib.joints_mse_per_sample)(pred, target, weight)
    chex.assert_shape(loss, (1,))
    chex.assert_trees_all_close(loss, jnp.array([2.5]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_stacked_heatmaps_average_the_per_stack_losses(self):
    # Two stacks against one target: stack 0 is exact (loss 0), stack 1 is off by 1 at the
    # single pixel of the single joint: 0.5 * 1 = 0.5; the mean over stacks is 0.25.
    target = jnp.zeros((1, 1, 1, 1))
    pred = jnp.stack([target, target + 1.0], axis=1)  # [B=1, S=2, h=1, w=1, K=1]
    loss = self.variant(step_lib.joints_mse_per_sample)(pred, target, jnp.ones((1, 1)))
    chex.assert_trees_all_close(loss, jnp.array([0.25]))
    chex.assert_shape(step_lib.final_heatmaps(pred), (1, 1, 1, 1))
    chex.assert_trees_all_close(step_lib.final_heatmaps(pred), target + 1.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_normalize_images(self):
    images = jnp.full((1, 1, 1, 3), 255, jnp.uint8)
    expected = (1.0 - jnp.array([0.485, 0.456, 0.406])) / jnp.array([0.229, 0.224, 0.225])
    chex.assert_trees_all_close(self.variant(step_lib.normalize_images)(images)[0, 0, 0],
                                expected, rtol=1e-6)


def _schedule_config(**train):
  c = ml_collections.ConfigDict()
  c.train = dict(total_steps=common.placeholder(int), total_epochs=common.placeholder(float))
  c.train.update(train)
  c.optim = common.adam_step_schedule(base_lr=1e-3, base_batch_size=32)
  return c


def test_epochs_become_steps_and_lr_decays_at_boundaries():
  c = _schedule_config(total_epochs=140.0)
  c.optim.decay_epochs = (90, 120)
  total, boundaries = optim.resolve_steps(c, steps_per_epoch=10)
  assert (total, boundaries) == (1400, (900, 1200))
  schedule = optim.learning_rate_schedule(c, global_batch_size=64, boundaries=boundaries)
  # base_lr 1e-3 at batch 32 -> 2e-3 at batch 64. Like torch's MultiStepLR at epoch
  # milestones, the update after 900 updates (optax count 900) is the first at x0.1.
  np.testing.assert_allclose([schedule(0), schedule(899), schedule(900), schedule(1200)],
                             [2e-3, 2e-3, 2e-4, 2e-5], rtol=1e-6)


def test_duration_must_be_set_exactly_once():
  with pytest.raises(UserError, match="total_steps / train.total_epochs"):
    optim.resolve_steps(_schedule_config(), steps_per_epoch=10)
  with pytest.raises(UserError, match="total_steps / train.total_epochs"):
    optim.resolve_steps(_schedule_config(total_steps=5, total_epochs=1.0), steps_per_epoch=10)


def test_parse_arg_is_typed_and_strict():
  arg = common.parse_arg("smoke,res=384", smoke=False, res=256, backbone="w32")
  assert (arg.smoke, arg.res, arg.backbone) == (True, 384, "w32")
  with pytest.raises(ValueError, match="unknown config argument 'smok'"):
    common.parse_arg("smok", smoke=False)
  with pytest.raises(ValueError, match="expected a boolean"):
    common.parse_arg("smoke=maybe", smoke=False)


def test_train_step_compiles_once_and_learns():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      x = nn.Conv(3, (1, 1))(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      return x, {}

  model, tx = Tiny(), optax.adam(1e-2)
  state = step_lib.create_train_state(model, tx, jax.random.key(0), input_hw=(4, 4))
  train_step = jax.jit(chex.assert_max_traces(step_lib.make_train_step(model, tx), n=1))
  rng = np.random.default_rng(0)
  batch = dict(image=jnp.asarray(rng.integers(0, 255, (2, 4, 4, 3)), jnp.uint8),
               heatmaps=jnp.asarray(rng.random((2, 4, 4, 3)), jnp.float32),
               target_weight=jnp.ones((2, 3), jnp.float32))
  losses = []
  for _ in range(30):
    state, metrics = train_step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss_sum"] / metrics["num_samples"]))
  assert int(state.step) == 30
  assert losses[-1] < 0.5 * losses[0]
