"""`config_check.validate`: every shipped config passes; each kind of mistake fails with one
line naming the key. Mistakes are written into the config's dict and rebuilt into a
ConfigDict, as a config file would create them (so `lock_config` cannot catch them)."""

import re

import ml_collections
import pytest

from configs import common
from configs import default
from configs import hsr_msnet_coco
from jaxpose import config_check
from jaxpose import train
from jaxpose.errors import UserError

# The docstring's launch examples, plus variants that between them take every value each
# `:ARGS` key lists (the cross product would trace 54 large models for no new information).
HSR_EXAMPLES = re.findall(r"hsr_msnet_coco\.py:(\S+)", hsr_msnet_coco.__doc__)
HSR_VARIANTS = HSR_EXAMPLES + [None, "smoke", "depth=161,deconv_kernel=3",
                               "baseline=True,depth=101,deconv_kernel=2",
                               "baseline=True,depth=152,res=384"]


# What the docstring's "Variants" section offers; the first of each is the default.
DOCUMENTED = {"depth": ["59", "110", "161", "50", "101", "152"], "msnet": ["True", "False"],
              "res": ["256", "384"], "deconv_kernel": ["4", "3", "2"],
              "baseline": ["False", "True"],
              "smoke": ["False", ""]}


def test_every_documented_variant_value_is_exercised():
  assert HSR_EXAMPLES == ["depth=59,res=256", "depth=110,res=384,msnet=False",
                          "baseline=True,depth=50"]
  section = hsr_msnet_coco.__doc__.split("Variants")[1].split("Expected")[0]
  exercised = {(key, values[0]) for key, values in DOCUMENTED.items()}  # the None variant
  exercised |= {tuple(item.partition("=")[::2]) for arg in HSR_VARIANTS if arg
                for item in arg.split(",")}
  for key, values in DOCUMENTED.items():
    assert re.search(rf"^  {key}\b|\b{key}=", section, re.MULTILINE), key
    for value in values:
      assert value in section, (key, value)
      assert (key, value) in exercised, (key, value)


def _resolved(module, arg):
  config = module.get_config(arg)
  if config.data.source == "coco":
    config.data.root = "/data/coco"  # the launch command gives it (--config.data.root)
  return config


@pytest.mark.parametrize("module, arg", [(default, None), (default, "smoke")]
                         + [(hsr_msnet_coco, arg) for arg in HSR_VARIANTS])
def test_shipped_config_passes(module, arg):
  config_check.validate(_resolved(module, arg), device_count=1, process_count=1)


def test_range_table_names_schema_keys():
  def in_schema(key, schema):
    for part in key.split("."):
      if part not in schema:
        return False
      schema = schema[part]
    return True

  schemas = [common.schema(kind) for kind in common.KINDS_WITH_SCHEMA]
  for key in config_check._RANGES:  # pylint: disable=protected-access
    assert any(in_schema(key, schema) for schema in schemas), key


def _edited(edit, arg="smoke") -> ml_collections.ConfigDict:
  """The default config's dict, edited in place by `edit`, as a config file would write it."""
  data = default.get_config(arg).to_dict()
  edit(data)
  return ml_collections.ConfigDict(data)


def _error(config, **counts) -> str:
  with pytest.raises(UserError) as caught:
    config_check.validate(config, **{"device_count": 1, "process_count": 1, **counts})
  message = str(caught.value)
  assert "\n" not in message
  return message


# (what is wrong, edit of the config dict, key the message must name, phrase it must hold)
MISTAKES = [
    ("unknown key", lambda d: d["input"].update(batchsize=4),
     "input.batchsize", "did you mean 'batch_size'"),
    ("unknown block", lambda d: d.update(agument={}), "agument", "did you mean 'augment'"),
    ("missing key", lambda d: d["train"].pop("log_every_steps"), "train.log_every_steps",
     "missing"),
    ("float for int", lambda d: d["input"].update(batch_size=4.0), "input.batch_size",
     "not an int"),
    ("str for bool", lambda d: d["augment"].update(flip="yes"), "augment.flip", "not a bool"),
    ("bool for float", lambda d: d["augment"].update(scale_factor=True), "augment.scale_factor",
     "not a float"),
    ("size of one number", lambda d: d["input"].update(size_hw=(64,)), "input.size_hw",
     "not a tuple[int, int]"),
    ("value for block", lambda d: d.update(eval=4), "eval", "not a block"),
    ("probability > 1", lambda d: d["augment"].update(rotation_prob=1.5), "augment.rotation_prob",
     "in [0, 1]"),
    ("negative probability", lambda d: d["augment"].update(half_body_prob=-0.1),
     "augment.half_body_prob", "in [0, 1]"),
    ("NaN", lambda d: d["optim"].update(base_lr=float("nan")), "optim.base_lr", "not a finite"),
    ("negative size", lambda d: d["input"].update(size_hw=(-64, 64)), "input.size_hw", ">= 1"),
    ("zero sigma", lambda d: d["input"].update(heatmap_sigma=0.0), "input.heatmap_sigma", "> 0"),
    ("zero batch", lambda d: d["eval"].update(batch_size=0), "eval.batch_size", ">= 1"),
    ("unknown layout", lambda d: d["data"].update(keypoints="coco18"), "data.keypoints",
     "unknown 'coco18'"),
    ("unknown source", lambda d: d["data"].update(source="cocoo"), "data.source",
     "unknown 'cocoo'"),
    ("unknown optimiser", lambda d: d["optim"].update(name="adamm"), "optim.name",
     "unknown 'adamm'"),
    ("unknown model", lambda d: d["model"].update(name="simplebaseline_r19"), "model.name",
     "unknown 'simplebaseline_r19'"),
    ("classifier", lambda d: d["model"].update(name="res2net50_26w4s", options={}),
     "model.name", "classifier model, which this trainer does not train"),
    ("integer dtype", lambda d: d["model"].update(dtype="int8"), "model.dtype", "not a floating"),
    ("unknown option", lambda d: d["model"]["options"].update(num_deconv_filter=(8,)),
     "model.options.num_deconv_filter", "did you mean 'num_deconv_filters'"),
    ("option of another model", lambda d: d["model"].update(name="hourglass_1"),
     "model.options.num_deconv_filters", "StackedHourglass (hourglass_1) has no such field"),
    ("option of wrong type", lambda d: d["model"]["options"].update(deconv_kernel=4.0),
     "model.options.deconv_kernel", "not an int"),
    ("option the trainer sets", lambda d: d["model"]["options"].update(num_keypoints=16),
     "model.options.num_keypoints", "set by data.keypoints"),
    ("input not a stride multiple", lambda d: d["input"].update(size_hw=(72, 64)),
     "input.size_hw / model.options", "cannot take (72, 64) inputs: ValueError: SimpleBaseline "
     "needs H and W divisible by 32"),
    ("heatmaps at another stride",
     lambda d: d["model"]["options"].update(num_deconv_layers=2, num_deconv_filters=(16, 16)),
     "input.size_hw / model.options", "8x8 heatmaps for 64x64 inputs (output stride 8), but the "
     "targets are rendered at input / 4 = 16x16"),
    ("two durations", lambda d: d["train"].update(total_epochs=2.0),
     "train.total_steps / train.total_epochs", "set exactly one"),
    ("no duration", lambda d: d["train"].update(total_steps=None),
     "train.total_steps / train.total_epochs", "set exactly one"),
    ("two decay units", lambda d: d["optim"].update(decay_epochs=(1.0,)),
     "optim.decay_steps / optim.decay_epochs", "at most one"),
    ("decay not increasing", lambda d: d["optim"].update(decay_steps=(4, 2)), "optim.decay_steps",
     "not strictly increasing"),
    ("decay repeated", lambda d: d["optim"].update(decay_steps=(3, 3)), "optim.decay_steps",
     "not strictly increasing"),
    ("decay at step 0", lambda d: d["optim"].update(decay_steps=(0,)), "optim.decay_steps", "> 0"),
    ("fractional decay step", lambda d: d["optim"].update(decay_steps=(2.5,)), "optim.decay_steps",
     "not a tuple of ints"),
    ("coco without root", lambda d: d["data"].update(source="coco"), "data.root", "empty"),
    ("tfds without folder", lambda d: d["data"].update(source="tfds"), "data.tfds_dir", "empty"),
    ("unknown decoder", lambda d: d["eval"].update(decode="argmax"), "eval.decode",
     "unknown 'argmax'"),
    ("missing detections", lambda d: d["eval"].update(person_boxes="/no/dets.json"),
     "eval.person_boxes", "neither 'gt' nor an existing detection results json"),
    ("negative pyramid scale", lambda d: d["eval"].update(multi_scale=(1.0, -0.5)),
     "eval.multi_scale", "must be"),
]


@pytest.mark.parametrize("what, edit, key, phrase", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_names_its_key(what, edit, key, phrase):
  del what
  message = _error(_edited(edit))
  assert message.startswith(f"config key {key}:") or message.startswith(f"config keys {key}:"), \
      message
  assert phrase in message, message


@pytest.mark.parametrize("block", ["input", "eval"])
def test_batch_not_divisible_by_devices_or_processes(block):
  config = default.get_config("smoke")  # batch sizes 8 and 8
  assert _error(config, device_count=3) == (
      "config key input.batch_size: 8 is not divisible by the 3 devices")
  config[block].batch_size = 12
  other = "eval" if block == "input" else "input"
  config[other].batch_size = 12
  config_check.validate(config, device_count=4, process_count=2)
  config[block].batch_size = 10
  assert _error(config, device_count=2, process_count=4) == (
      f"config key {block}.batch_size: 10 is not divisible by the 4 processes")


def test_train_run_refuses_before_writing_the_workdir(tmp_path):
  config = _edited(lambda d: d["input"].update(batchsize=4))
  with pytest.raises(UserError, match="config key input.batchsize: unknown key"):
    train.run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_variant_argument_outside_its_choices_is_named():
  assert common.parse_arg("res=384", res=common.one_of(256, 384)).res == 384
  assert common.parse_arg(None, res=common.one_of(256, 384)).res == 256
  with pytest.raises(ValueError,
                     match=r"^config argument res='300': expected one of \[256, 384\]$"):
    common.parse_arg("res=300", res=common.one_of(256, 384))


def test_decay_after_the_end_only_warns(caplog):
  """A shortened run keeps the recipe's boundaries: legal, but worth a warning."""
  config = _edited(lambda d: d["optim"].update(decay_steps=(4, 6)))
  config_check.validate(config, device_count=1, process_count=1)
  assert any("boundary 6 is not before the end of training (train.total_steps = 6)" in r.getMessage()
             for r in caplog.records), caplog.text
