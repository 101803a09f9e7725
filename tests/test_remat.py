"""`model.remat` (`layers.apply_block`): the backbone's blocks recomputed in the backward
pass. It must change nothing but memory: the same parameter tree, loss, gradients and
BatchNorm statistics, with every rematerialised block fenced for the compiler."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import default
from jaxpose import train
from jaxpose.errors import UserError
from jaxpose.models import dekr
from jaxpose.models import hourglass
from jaxpose import models
from jaxpose.models import hrnet
from jaxpose.models import hsr_msnet
from jaxpose.models import layers
from jaxpose.models import resnet
from jaxpose.models import sadinet
from jaxpose.models import simple_baseline

_TINY_HRNET_STAGES = ((1, 2, 1), (1, 3, 1), (1, 4, 1))  # (modules, branches, blocks)

# Small instances of every model family that has the switch, and their input sizes.
_MODELS = {
    "simplebaseline_r18": (functools.partial(
        simple_baseline.SimpleBaseline, depth=18, num_keypoints=3,
        num_deconv_filters=(8, 8, 8)), 64),
    "hrnet": (functools.partial(hrnet.HRNet, width=4, num_keypoints=3,
                                stages=_TINY_HRNET_STAGES), 64),
    "hourglass_2": (functools.partial(hourglass.StackedHourglass, num_stacks=2, width=16,
                                      num_keypoints=3), 64),
    "dekr": (functools.partial(dekr.DEKR, width=4, heatmap_channels=4, num_keypoints=3,
                               stages=_TINY_HRNET_STAGES, offset_channels_per_keypoint=4), 64),
    "sadinet": (functools.partial(sadinet.sadinet_tiny, num_keypoints=3, num_stacks=1), 64),
    "hsr_msnet": (functools.partial(hsr_msnet.HSRMSNet, stage_sizes=(1, 1, 1, 1, 1),
                                    num_keypoints=3, multiscale=True, base_width=4,
                                    num_deconv_filters=(8, 8)), 32),
}


def _loss_and_grads(model):
  """jit((params, batch_stats, images) -> ((loss, BatchNorm updates), d loss / d params))."""
  def loss_fn(params, batch_stats, images):
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                   images, train=True, mutable=["batch_stats"])
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(outputs)), updates
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


def _scaled(tree, reference):
  """Each leaf divided by its largest magnitude in `reference`: float32 sums in another order
  differ by ~1e-7 of a leaf's scale, which an element-wise rtol misreads on near-zero
  entries. A leaf whose reference is below 1e-3 of the tree's largest value is a gradient
  that is zero in exact arithmetic (a conv bias feeding BatchNorm): it becomes 0 here, after
  `_assert_noise_leaves_small` checked that both trees keep it below that floor."""
  floor = 1e-3 * max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(reference))
  return jax.tree.map(lambda leaf, ref: leaf / jnp.max(jnp.abs(ref))
                      if float(jnp.max(jnp.abs(ref))) > floor else jnp.zeros_like(leaf),
                      tree, reference)


def _assert_noise_leaves_small(tree, reference):
  floor = 1e-3 * max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(reference))
  for leaf, ref in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)):
    if float(jnp.max(jnp.abs(ref))) <= floor:
      assert float(jnp.max(jnp.abs(leaf))) <= floor


# Each gradient pair compiles for 35-60 s on a 2-core CPU, too long for CI's 15-minute
# budget: they run with `-m slow` (all passed 2026-12-03); every family uses the same
# `layers.apply_block` call, whose lowering the next test checks in the default suite.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_MODELS))
def test_remat_keeps_params_loss_gradients_and_batch_statistics(name):
  constructor, size = _MODELS[name]
  images = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  plain, remat = constructor(), constructor(remat=True)
  variables = plain.init(jax.random.key(1), images, train=False)
  chex.assert_trees_all_equal_shapes(
      variables, remat.init(jax.random.key(1), images, train=False))
  args = (variables["params"], variables["batch_stats"], images)
  (loss, stats), grads = _loss_and_grads(plain)(*args)
  (loss_r, stats_r), grads_r = _loss_and_grads(remat)(*args)
  chex.assert_trees_all_close(loss_r, loss, rtol=1e-5)
  _assert_noise_leaves_small(grads_r, grads)
  chex.assert_trees_all_close(_scaled(grads_r, grads), _scaled(grads, grads), atol=1e-5)
  chex.assert_trees_all_close(_scaled(stats_r, stats), _scaled(stats, stats), atol=1e-6)


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_remat_fences_each_block_for_the_compiler(name):
  # jax.checkpoint hands XLA the recomputation fenced by optimisation barriers, one per
  # rematerialised block call; GPU and TPU compilers keep them (the memory saving). XLA's
  # CPU pipeline expands them before fusion and CSE merges the recomputation back into the
  # forward, so on CPU the compiled temporaries of unscanned blocks do not shrink; inside a
  # scan they do (the next test; BUILD_NOTES, Performance).
  constructor, size = _MODELS[name]
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(  # shapes only: nothing is compiled or run
      lambda: constructor().init(jax.random.key(1), jnp.zeros(images.shape), train=False))
  barriers = []
  for model in (constructor(), constructor(remat=True)):
    lowered = _loss_and_grads(model).lower(variables["params"], variables["batch_stats"], images)
    barriers.append(lowered.as_text().count("optimization_barrier"))
  assert barriers[0] == 0 and barriers[1] > 0, barriers


class _ScannedBlocks(nn.Module):
  """Six ResNet BasicBlocks as one `layers.scan_repeated`, as HRNet's modules and DEKR's
  branches run theirs."""
  remat: bool

  @nn.compact
  def __call__(self, x, *, train):
    def body(carry, _):
      block = resnet.BasicBlock(carry.shape[-1], name="block")
      return layers.apply_block(block, carry, train=train, remat=self.remat), None
    return layers.scan_repeated(body, x, None, 6, "blocks")[0]


def test_remat_inside_a_scan_shrinks_the_compiled_temporaries():
  # The forward and backward scans are two loops, which CPU's CSE cannot merge, so a remat'd
  # body keeps only its input per step, on CPU too. Measured here: 11.5 MB -> 3.5 MB;
  # SAMKR-W32 at 512, batch 8: 30.5 -> 10.3 GB (BUILD_NOTES, Performance).
  images = jnp.ones((4, 32, 32, 16))
  temporaries = []
  for remat in (False, True):
    model = _ScannedBlocks(remat)
    variables = model.init(jax.random.key(0), images, train=False)
    compiled = _loss_and_grads(model).lower(
        variables["params"], variables["batch_stats"], images).compile()
    temporaries.append(compiled.memory_analysis().temp_size_in_bytes)
  assert temporaries[1] < 0.5 * temporaries[0], temporaries


def test_every_pose_model_has_the_switch():
  # Only the ImageNet classifier (Res2Net, read for its weights) goes without.
  missing = [name for name in models.MODELS
             if not models.supports_remat(name) and models.KINDS[name] != "classifier"]
  assert not missing, missing


def test_config_switch_reaches_the_model_and_is_refused_where_missing(monkeypatch):
  config = default.get_config("smoke")
  config.model.remat = True
  assert train.build_model(config).remat
  monkeypatch.setattr(models, "supports_remat", lambda name: False)  # a model without it
  with pytest.raises(UserError, match="model.remat: simplebaseline_r18 has no"):
    train.build_model(config)
