"""Tests for `jaxpose.pretrained`: ImageNet backbones and whole checkpoints into fresh models.

State_dicts come from the existing parity fixtures, so their key lists are the official
code's: the torchvision ResNet-18 is `simple_baseline_tiny.npz`'s official `PoseResNet`
R18 (hash-generated tensors, `test_models._fixture_state_dict`) without its head, plus
`fc.*`; the HRNet ImageNet checkpoint is `hrnet_tiny.npz`'s official pose_hrnet state_dict
(width 6) without its `final_layer`, plus the multi-scale stage-4 fuses (`dekr_extra/`)
and the classification head of HRNet/HRNet-Image-Classification @f760c98
`lib/models/cls_hrnet.py` (`_make_head` and `classifier`), its names and shapes written
out below from that file, values random. Fresh variables are random numpy trees of the
model's shapes (no init compile): the loader must pass them through untouched.
"""

import functools
import re
from pathlib import Path

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_models
import test_res2net
from conftest import launch
from configs import default as default_config
from jaxpose import mesh as mesh_lib
from jaxpose import metrics_log
from jaxpose import models
from jaxpose import pretrained
from jaxpose import step as step_lib
from jaxpose import train
from jaxpose.errors import UserError
from jaxpose.models import dekr
from jaxpose.models import hrnet
from jaxpose.models import hrnet_torch_import
from jaxpose.models import res2net
from jaxpose.models import res2net_torch_import
from jaxpose.models import torch_import
from test_weights_io import write_state_dict_safetensors

HRNET_FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_tiny.npz"
HRNET_STAGES = (hrnet.StageSpec(1, 2, 2), hrnet.StageSpec(2, 3, 1), hrnet.StageSpec(2, 4, 1))
TINY_HEAD = dict(num_deconv_filters=(16, 16, 16))


def _fresh_variables(model, input_hw=(64, 64), seed=0):
  """Random numpy variables of `model`'s shapes: stand-ins for a fresh init."""
  init = functools.partial(model.init, train=False)
  shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *input_hw, 3)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _torch_value(state_dict, collection, path, key_of):
  """The state_dict entry of flax variable `path`, in flax layout (conv kernels moved)."""
  value = state_dict[key_of(collection, path)]
  return np.transpose(value, (2, 3, 1, 0)) if path[-1] == "kernel" else value


def _assert_subtree_from(variables, state_dict, key_of, in_subtree):
  """Every variable `in_subtree` equals its state_dict entry; returns how many there are."""
  count = 0
  for collection in ("params", "batch_stats"):
    for path, value in flax.traverse_util.flatten_dict(variables[collection]).items():
      if in_subtree(path):
        np.testing.assert_array_equal(value, _torch_value(state_dict, collection, path, key_of),
                                      err_msg=str(path))
        count += 1
  return count


def _assert_outside_untouched(variables, fresh, in_subtree):
  for collection in ("params", "batch_stats"):
    new = flax.traverse_util.flatten_dict(variables[collection])
    old = flax.traverse_util.flatten_dict(fresh[collection])
    assert new.keys() == old.keys()
    outside = [path for path in old if not in_subtree(path)]
    assert outside or collection == "batch_stats"
    for path in outside:
      np.testing.assert_array_equal(new[path], old[path], err_msg=str(path))


def _under_backbone(path):
  return path[0] == "backbone"


def _torchvision_r18() -> dict[str, np.ndarray]:
  """ResNet-18 keys as torchvision saves them: the fixture's pose_resnet backbone + fc."""
  pose = test_models._fixture_state_dict(test_models._load_fixture(), "r18_k4")
  state_dict = {key: value for key, value in pose.items()
                if not key.startswith(("deconv_layers.", "final_layer."))}
  state_dict["fc.weight"] = test_models._fixture_tensor(1000, (1000, 512))
  state_dict["fc.bias"] = test_models._fixture_tensor(1001, (1000,))
  return state_dict


def _cls_hrnet_head(widths, rng) -> dict[str, np.ndarray]:
  """cls_hrnet's classification keys for branch widths `widths` (= C, 2C, 4C, 8C)."""
  head_channels = (32, 64, 128, 256)  # _make_head; Bottleneck expansion 4
  shapes = {}

  def batch_norm(prefix, channels):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{leaf}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  for i, (inplanes, planes) in enumerate(zip(widths, head_channels)):
    block = f"incre_modules.{i}.0"  # _make_layer(Bottleneck, C_i, planes, 1): one block
    shapes[f"{block}.conv1.weight"] = (planes, inplanes, 1, 1)
    shapes[f"{block}.conv2.weight"] = (planes, planes, 3, 3)
    shapes[f"{block}.conv3.weight"] = (4 * planes, planes, 1, 1)
    shapes[f"{block}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
    for bn, channels in (("bn1", planes), ("bn2", planes), ("bn3", 4 * planes),
                         ("downsample.1", 4 * planes)):
      batch_norm(f"{block}.{bn}", channels)
  for i in range(3):  # stride-2 3x3 conv with bias, BN, ReLU
    shapes[f"downsamp_modules.{i}.0.weight"] = (4 * head_channels[i + 1], 4 * head_channels[i],
                                                3, 3)
    shapes[f"downsamp_modules.{i}.0.bias"] = (4 * head_channels[i + 1],)
    batch_norm(f"downsamp_modules.{i}.1", 4 * head_channels[i + 1])
  shapes["final_layer.0.weight"] = (2048, 4 * head_channels[3], 1, 1)
  shapes["final_layer.0.bias"] = (2048,)
  batch_norm("final_layer.1", 2048)
  shapes["classifier.weight"], shapes["classifier.bias"] = (1000, 2048), (1000,)
  return {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}


def _hrnet_fixture():
  with np.load(HRNET_FIXTURE) as data:
    pose = {k[len("state_dict/"):]: data[k] for k in data.files if k.startswith("state_dict/")}
    fuses = {k[len("dekr_extra/"):]: data[k] for k in data.files if k.startswith("dekr_extra/")}
  return pose, fuses


def _cls_hrnet_imagenet() -> dict[str, np.ndarray]:
  """A width-6 HRNet-Image-Classification state_dict (see the module docstring)."""
  pose, fuses = _hrnet_fixture()
  backbone = {key: value for key, value in pose.items() if not key.startswith("final_layer.")}
  head = _cls_hrnet_head((6, 12, 24, 48), np.random.default_rng(7))
  return {**backbone, **fuses, **head}


def test_torchvision_resnet_fills_the_backbone_only(tmp_path):
  state_dict = _torchvision_r18()
  np.savez(tmp_path / "resnet18.npz", **state_dict)
  model = models.build("simplebaseline_r18", num_keypoints=5, **TINY_HEAD)
  fresh = _fresh_variables(model)
  loaded = pretrained.load_into(fresh, str(tmp_path / "resnet18.npz"), "simplebaseline_r18",
                                model=model, backbone_only=True)
  count = _assert_subtree_from(loaded, state_dict, torch_import.torch_key, _under_backbone)
  # Every key but fc.* and num_batches_tracked went into exactly one backbone variable:
  # conv1 + bn1 (5), 8 BasicBlocks x (2 convs + 2 BNs) (80), 3 downsamples (15).
  used = [k for k in state_dict if not k.startswith("fc.") and "num_batches" not in k]
  assert count == len(used) == 100
  _assert_outside_untouched(loaded, fresh, _under_backbone)
  assert "fc" not in loaded["params"]


def test_mismatched_backbone_names_every_bad_key(tmp_path):
  state_dict = _torchvision_r18()
  state_dict["layer3.0.conv1.weight"] = np.zeros((256, 128, 1, 1), np.float32)
  del state_dict["layer2.1.bn2.running_var"]
  state_dict["deconv_layers.0.weight"] = np.zeros((512, 16, 4, 4), np.float32)
  path = tmp_path / "resnet18.npz"
  np.savez(path, **state_dict)
  model = models.build("simplebaseline_r18", num_keypoints=5, **TINY_HEAD)
  with pytest.raises(UserError) as raised:
    pretrained.load_into(_fresh_variables(model), str(path), "simplebaseline_r18", model=model,
                         backbone_only=True)
  message = str(raised.value)
  for expected in (str(path), "1 missing: layer2.1.bn2.running_var",
                   "1 extra: deconv_layers.0.weight",
                   "1 mis-shaped: layer3.0.conv1.weight: got (256, 128, 1, 1), "
                   "expected (256, 128, 3, 3)"):
    assert expected in message
  assert "\n" not in message and "fc." not in message


def test_hrnet_imagenet_checkpoint_fills_hrnet_and_dekr_backbones(tmp_path):
  state_dict = _cls_hrnet_imagenet()
  path = tmp_path / "hrnet_w6_imagenet.npz"
  np.savez(path, **state_dict)
  dropped = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
  used = [k for k in state_dict if not k.startswith(dropped) and "num_batches" not in k]
  _, fuses = _hrnet_fixture()
  fuse_keys = [k for k in fuses if "num_batches" not in k]

  pose_model = hrnet.HRNet(width=6, num_keypoints=5, stages=HRNET_STAGES)
  fresh = _fresh_variables(pose_model)
  loaded = pretrained.load_into(fresh, str(path), "hrnet_w32", model=pose_model,
                                backbone_only=True)
  count = _assert_subtree_from(loaded, state_dict, hrnet_torch_import.torch_key, _under_backbone)
  assert count == len(used) - len(fuse_keys)  # pose HRNet has no stage-4 fuse into 1-3
  _assert_outside_untouched(loaded, fresh, _under_backbone)

  # DEKR's backbone keeps every branch: the multi-scale fuses are loaded, not dropped.
  dekr_model = dekr.DEKR(width=6, heatmap_channels=8, num_keypoints=2, stages=HRNET_STAGES,
                         offset_channels_per_keypoint=4)
  fresh = _fresh_variables(dekr_model)
  loaded = pretrained.load_into(fresh, str(path), "dekr_w32", model=dekr_model,
                                backbone_only=True)
  assert _assert_subtree_from(loaded, state_dict, hrnet_torch_import.torch_key,
                              _under_backbone) == len(used)
  _assert_outside_untouched(loaded, fresh, _under_backbone)


def test_hrnet_imagenet_checkpoint_fills_scanned_stage_modules(tmp_path):
  # Three modules in stages 3 and 4 (module 1's weights copied to module 2): `scan_modules`
  # stacks the first two of each under stage{s}_modules/. The scanned load must be the
  # unrolled load, stacked, for pose HRNet (last module fuses into branch 0) and DEKR.
  state_dict = _cls_hrnet_imagenet()
  for key, value in list(state_dict.items()):
    if match := re.fullmatch(r"stage([34])\.1\.(.*)", key):
      state_dict[f"stage{match[1]}.2.{match[2]}"] = value
  path = tmp_path / "hrnet_w6_imagenet_3_modules.npz"
  np.savez(path, **state_dict)
  stages = (hrnet.StageSpec(1, 2, 2), hrnet.StageSpec(3, 3, 1), hrnet.StageSpec(3, 4, 1))
  for name, model in (("hrnet_w32", hrnet.HRNet(width=6, num_keypoints=5, stages=stages)),
                      ("dekr_w32", dekr.DEKR(width=6, heatmap_channels=8, num_keypoints=2,
                                             stages=stages, offset_channels_per_keypoint=4))):
    loaded = pretrained.load_into(_fresh_variables(model), str(path), name, model=model,
                                  backbone_only=True)
    unrolled = pretrained.load(str(path), name, model=model.clone(scan_modules=False),
                               backbone_only=True)
    backbone = hrnet.backbone_scanned_layout(unrolled, model)
    assert set(loaded["params"]["backbone"]) == set(backbone["params"]["backbone"])
    assert "stage3_modules" in backbone["params"]["backbone"], name
    chex.assert_trees_all_equal({c: loaded[c]["backbone"] for c in loaded},
                                {c: backbone[c]["backbone"] for c in backbone})


def test_backbone_of_another_width_is_named(tmp_path):
  path = tmp_path / "hrnet_w6_imagenet.npz"
  np.savez(path, **_cls_hrnet_imagenet())
  model = hrnet.HRNet(width=8, num_keypoints=5, stages=HRNET_STAGES)
  # Every variable but the stem and layer1 is mis-shaped; the first 20 are listed.
  with pytest.raises(UserError, match=r"375 mis-shaped: stage2\.0\.branches\.0\.0\.bn1\.bias: "
                                      r"got \(6,\), expected \(8,\); .*\(355 more\)$"):
    pretrained.load_into(_fresh_variables(model), str(path), "hrnet_w32", model=model,
                         backbone_only=True)


def test_res2net_imagenet_checkpoint_keeps_a_fresh_classifier(tmp_path):
  _, state_dict = test_res2net._load_fixture()  # the official Res2Net's keys, with fc.*
  np.savez(tmp_path / "res2net.npz", **state_dict)
  model = res2net.Res2Net(stage_sizes=(2, 1, 1, 2), base_width=4, scale=4, num_classes=1000)
  fresh = _fresh_variables(model)
  loaded = pretrained.load_into(fresh, str(tmp_path / "res2net.npz"), "res2net50_26w4s",
                                model=model, backbone_only=True)
  not_fc = lambda path: path[0] != "fc"
  used = [k for k in state_dict if not k.startswith("fc.") and "num_batches" not in k]
  assert _assert_subtree_from(loaded, state_dict, res2net_torch_import.torch_key,
                              not_fc) == len(used)
  _assert_outside_untouched(loaded, fresh, not_fc)  # the 1000-way fc keeps its init


def test_whole_checkpoint_round_trip_through_safetensors(tmp_path):
  pose, _ = _hrnet_fixture()
  path = tmp_path / "pose_hrnet_w6.safetensors"
  write_state_dict_safetensors(path, {k: np.asarray(v) for k, v in pose.items()})
  model = hrnet.HRNet(width=6, num_keypoints=17, stages=HRNET_STAGES)
  loaded = pretrained.load_into(_fresh_variables(model), str(path), "hrnet_w32", model=model,
                                backbone_only=False)
  # Equal to the parity-tested importer's result on the in-memory state_dict, leaf by leaf.
  expected = hrnet_torch_import.hrnet_from_torch(pose, model)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  # A backbone checkpoint is not a whole checkpoint: the head keys are named missing.
  np.savez(tmp_path / "imagenet.npz", **_cls_hrnet_imagenet())
  with pytest.raises(UserError, match=r"whole checkpoint: .*2 missing: final_layer.bias; "
                                      r"final_layer.weight"):
    pretrained.load_into(_fresh_variables(model), str(tmp_path / "imagenet.npz"), "hrnet_w32",
                         model=model, backbone_only=False)


def test_families_without_the_requested_load_are_named():
  model = models.build("simplebaseline_r18", num_keypoints=5, **TINY_HEAD)
  with pytest.raises(UserError, match="'hourglass_2' has no ImageNet backbone"):
    pretrained.load_into({}, "x.npz", "hourglass_2", model=model, backbone_only=True)
  with pytest.raises(UserError, match="'sadinet': no checkpoint importer; .*hrnet\\*"):
    pretrained.load_into({}, "x.npz", "sadinet", model=model, backbone_only=True)


def _smoke_config(init_from: str):
  config = default_config.get_config("smoke")
  config.model.init_from = init_from
  return config


def test_fresh_state_gets_the_weights_and_a_matching_optimiser_state(tmp_path):
  state_dict = _torchvision_r18()
  np.savez(tmp_path / "resnet18.npz", **state_dict)
  config = _smoke_config(str(tmp_path / "resnet18.npz"))
  model = models.build(config.model.name, num_keypoints=5, **config.model.options)
  fresh = _fresh_variables(model)
  # An optimiser whose state is a copy of the params it was initialised with.
  tx = optax.GradientTransformation(lambda params: {"copy": params}, None)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=fresh["params"],
                              batch_stats=fresh["batch_stats"], opt_state=tx.init(fresh["params"]))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  new = pretrained.put_into_state(pretrained.read_init_from(config, model), state, tx, device)
  kernel = np.transpose(state_dict["conv1.weight"], (2, 3, 1, 0))
  np.testing.assert_array_equal(new.params["backbone"]["conv1"]["kernel"], kernel)
  np.testing.assert_array_equal(new.opt_state["copy"]["backbone"]["conv1"]["kernel"], kernel)
  np.testing.assert_array_equal(new.batch_stats["backbone"]["bn1"]["var"],
                                state_dict["bn1.running_var"])
  np.testing.assert_array_equal(new.params["final_layer"]["kernel"],
                                fresh["params"]["final_layer"]["kernel"])
  assert new.params["backbone"]["conv1"]["kernel"].sharding == device

  with pytest.raises(UserError, match=r"config key model.init_from .*: .*missing.npz: weight "
                                      r"file not found"):
    pretrained.read_init_from(_smoke_config(str(tmp_path / "missing.npz")), model)
  assert pretrained.read_init_from(_smoke_config(""), model) is None
  assert pretrained.put_into_state(None, state, tx, device) is state


class _ResumingCheckpointer:
  """Says the run already reached its last step; restores a zero state."""

  def __init__(self, directory, step):
    self.directory, self.step, self.restored = directory, step, []

  def latest_step(self):
    return self.step

  def restore(self, step, abstract_state, data_iterator):
    self.restored.append(step)
    state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_state)
    return state.replace(step=np.array(step, np.int32))

  def save(self, *args):
    raise AssertionError("nothing to train, nothing to save")

  def wait(self):
    pass


def test_resumed_run_does_not_reapply_init_from(tmp_path, synthetic_cache):
  # A missing file would raise if it were read: the resumed run must not even look.
  config = _smoke_config(str(tmp_path / "missing.npz"))
  config.data.synthetic.cache_dir = str(synthetic_cache)
  model = train.build_model(config)
  checkpointer = _ResumingCheckpointer(tmp_path, config.train.total_steps)
  state = train.train(config, tmp_path, model, mesh_lib.make_data_mesh(), checkpointer,
                      metrics_log.MetricsLog(tmp_path))
  assert checkpointer.restored == [config.train.total_steps]
  assert int(state.step) == config.train.total_steps
  assert not np.any(state.params["backbone"]["conv1"]["kernel"])


def test_launch_with_missing_init_from_is_one_line(tmp_path, synthetic_cache):
  missing = tmp_path / "resnet18-nowhere.pth"
  result = launch(tmp_path / "run", f"--config.model.init_from={missing}",
                  cache_dir=synthetic_cache, check=False)
  assert result.returncode != 0
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("jaxpose: error")]
  assert len(error_lines) == 1, result.stderr
  assert "config key model.init_from" in error_lines[0], result.stderr
  assert f"{missing}: weight file not found" in error_lines[0]
  assert "Traceback" not in result.stderr
