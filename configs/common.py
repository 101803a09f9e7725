"""Shared pieces of jaxpose configs: argument parsing and presets, called, never inherited."""

import ml_collections


def _parse_value(key: str, text: str, default):
  if isinstance(default, bool):
    if text in ("True", "true", "1", ""):
      return True
    if text in ("False", "false", "0"):
      return False
    raise ValueError(f"config argument {key}={text!r}: expected a boolean (true/false)")
  try:
    return type(default)(text)
  except ValueError as e:
    raise ValueError(
        f"config argument {key}={text!r}: expected {type(default).__name__}") from e


class OneOf(tuple):
  """A `parse_arg` default that admits only the listed values; the first is the default."""


def one_of(*values) -> OneOf:
  """E.g. `parse_arg(arg, res=one_of(256, 384))`: `res=300` raises, naming the choices."""
  return OneOf(values)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `k=v,flag` (the text after `:` in `--config file.py:ARGS`) against typed defaults.

  A bare name means True. An unknown key raises, listing the known ones, so a typo
  in a variant name never silently runs the default; so does a value outside a `one_of`.
  """
  parsed = {key: default[0] if isinstance(default, OneOf) else default
            for key, default in defaults.items()}
  for item in filter(None, (arg or "").split(",")):
    key, _, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    parsed[key] = _parse_value(key, text.strip(), parsed[key])
    if isinstance(defaults[key], OneOf) and parsed[key] not in defaults[key]:
      raise ValueError(f"config argument {key}={text.strip()!r}: expected one of "
                       f"{list(defaults[key])}")
  return ml_collections.ConfigDict(parsed)


def placeholder(kind):
  """A field that may stay unset (None) but only accepts `kind` when set."""
  return ml_collections.config_dict.placeholder(kind)


def pretrained_init(init_from: str = "", backbone_only: bool = True) -> dict:
  """The `model.init_from*` keys every config's `model` block carries (`**` them in).

  init_from: a `.pth`, `.npz` or `.safetensors` file loaded once, when a new run starts
    (a resumed run keeps its trained weights); "" starts from the random init.
  backbone_only: True loads an ImageNet classifier checkpoint (torchvision ResNet,
    HRNet-Image-Classification, Res2Net, DetNet-59) into the backbone only and keeps the
    head's fresh init; False loads a whole checkpoint of the same model. See
    `jaxpose/pretrained.py`.
  """
  return dict(init_from=init_from, init_backbone_only=backbone_only)


def topdown_augmentation(**overrides) -> ml_collections.ConfigDict:
  """HRNet/SimpleBaseline top-down augmentation (their COCO yaml values)."""
  aug = dict(
      flip=True,
      scale_factor=0.35,  # scale ~ clip(N(1, 0.35), 0.65, 1.35)
      rotation_factor=40.0,  # degrees ~ clip(N(0, 40), -80, 80), applied with rotation_prob
      rotation_prob=0.6,
      half_body_prob=0.3,
      half_body_min_joints=8,
      box_padding=1.25,
      translate_factor=0.0,  # centre shift U(+-f) x box size; HRNet has none, SAN uses 0.02
  )
  aug.update(overrides)
  return ml_collections.ConfigDict(aug)


def train_loop(log_every_steps: int, checkpoint_every_steps: int, keep_checkpoints: int = 2,
               eval_every_steps: int = 0, eval_at_start: bool = False
               ) -> ml_collections.ConfigDict:
  """The `train` block; the config then sets exactly one of `total_steps`, `total_epochs`.

  eval_every_steps: also evaluate on the val split every this many steps while training
    (mmpose's `val_interval`), each result a row of metrics.jsonl; 0: only after training
    (`--mode train_and_eval`).
  eval_at_start: also evaluate a new run's initial weights before its first step (a
    metrics.jsonl row at step 0): the point a learning curve starts from, and a check that
    imported weights (`model.init_from`) score what their source reports.
  """
  return ml_collections.ConfigDict(dict(
      total_steps=placeholder(int),
      total_epochs=placeholder(float),
      log_every_steps=log_every_steps,
      checkpoint_every_steps=checkpoint_every_steps,
      keep_checkpoints=keep_checkpoints,
      eval_every_steps=eval_every_steps,
      eval_at_start=eval_at_start,
  ))


def topdown_eval(batch_size: int, num_visualize: int = 4) -> ml_collections.ConfigDict:
  """The `eval` block with SimpleBaseline/HRNet's test settings: flip test, rescoring with
  keypoints above 0.2 (`in_vis_thre`), OKS-NMS at 0.9.

  person_boxes: "gt" crops the ground-truth persons (HRNet USE_GT_BBOX); a path crops the
    person boxes of that COCO detection results json (e.g.
    COCO_val2017_detections_AP_H_56_person.json), keeping those scoring at least
    `box_score_threshold` (HRNet's IMAGE_THRE, 0.0 in its COCO yamls).
  multi_scale: () for one crop; else the crop scale factors of an image pyramid whose heatmaps
    are averaged (e.g. (0.8, 1.0, 1.2)); (1.0,) equals ().
  decode: "quarter" (HRNet's quarter-pixel shift) or "dark" (DARK's Taylor refinement, its
    blur kernel from `input.heatmap_sigma`).
  """
  return ml_collections.ConfigDict(dict(batch_size=batch_size, flip_test=True,
                                        keypoint_score_threshold=0.2, oks_nms_threshold=0.9,
                                        num_visualize=num_visualize, person_boxes="gt",
                                        box_score_threshold=0.0, multi_scale=(),
                                        decode="quarter"))


def adam_step_schedule(base_lr: float, base_batch_size: int, decay_factor: float = 0.1):
  """Adam with a step schedule, the SimpleBaseline/HRNet recipe; the decay
  boundaries (`decay_steps` or `decay_epochs`) are set by the config."""
  return ml_collections.ConfigDict(dict(
      name="adam",
      base_lr=base_lr,
      base_batch_size=base_batch_size,
      decay_factor=decay_factor,
      decay_steps=placeholder(tuple),
      decay_epochs=placeholder(tuple),
      warmup_steps=0,
      # A gradient with a NaN or Inf stops training (naming the step and the last good
      # checkpoint); True instead skips that update and counts it in metrics.jsonl
      # (`nonfinite_updates_skipped`), stopping only after this many skips in a row.
      skip_nonfinite_updates=False,
      max_consecutive_nonfinite_updates=5,
  ))


def bottomup_augmentation(**overrides) -> ml_collections.ConfigDict:
  """DEKR's whole-image augmentation (its COCO yamls; SAMKR Sec. IV-A uses the same values):
  scale ~ U[min_scale, max_scale), rotation ~ U[-max_rotation, max_rotation] degrees,
  translation up to max_translate x the image's short side (DEKR's MAX_TRANSLATE 40 / 200),
  horizontal flip."""
  aug = dict(max_rotation=30.0, min_scale=0.75, max_scale=1.5, max_translate=0.2,
             flip_probability=0.5)
  aug.update(overrides)
  return ml_collections.ConfigDict(aug)


def bottomup_targets(**overrides) -> ml_collections.ConfigDict:
  """DEKR's target generators (its COCO yamls): keypoint heatmap sigma 2, centre sigma 4,
  background weight 0.1 on the heatmaps, offsets within radius 4 of each centre."""
  targets = dict(sigma=2.0, center_sigma=4.0, background_weight=0.1, offset_radius=4)
  targets.update(overrides)
  return ml_collections.ConfigDict(targets)


def bottomup_loss(heatmap_loss: str = "dekr", **overrides) -> ml_collections.ConfigDict:
  """The bottom-up `loss` block (`jaxpose.losses.bottomup.LossConfig`): "dekr" (DEKR's
  weighted MSE) or "swahr" (SWAHR's scale-adaptive heatmap loss); DEKR's factors 1 / 0.03."""
  loss = dict(heatmap_loss=heatmap_loss, heatmap_factor=1.0, offset_factor=0.03,
              scale_factor=1.0)
  loss.update(overrides)
  return ml_collections.ConfigDict(loss)


def bottomup_eval(batch_size: int, input_size: int, canvas_size: int, num_visualize: int = 4,
                  **overrides) -> ml_collections.ConfigDict:
  """The bottom-up `eval` block: DEKR's single-scale test with flip (its COCO yamls).

  input_size: the short side images are resized to (DEKR's INPUT_SIZE); canvas_size: the
    square every resized image is padded into, so the predict step compiles once (an image
    that does not fit is resized smaller and counted in `eval_images_shrunk`).
  max_people, center_threshold, nms_distance, nms_min_joints: DEKR's MAX_NUM_PEOPLE,
    KEYPOINT_THRESHOLD, NMS_THRE, NMS_NUM_THRE (COCO 30 / 0.01 / 0.05 / 8).
  rescore_model: DEKR's pose rescoring net (RESCORE.VALID / MODEL_FILE): a released .pth or
    the .npz of `python -m jaxpose.tools.rescore`; "" scores poses by their heat values only.
  """
  block = dict(batch_size=batch_size, flip_test=True, input_size=input_size,
               canvas_size=canvas_size, max_people=30, center_threshold=0.01,
               nms_distance=0.05, nms_min_joints=8, num_visualize=num_visualize,
               rescore_model="")
  block.update(overrides)
  return ml_collections.ConfigDict(block)


def integral_augmentation(**overrides) -> ml_collections.ConfigDict:
  """SAN Sec. 3.5 augmentation with integral-human-pose's samplers (`common/utility/augment.py`):
  scale ~ clip(N(1, s), 1-s, 1+s), rotation ~ clip(N(0, r), -2r, 2r) degrees with
  probability rotation_prob, flip 0.5, centre shifted by U(+-translate_factor) x box size; the
  RLE box cropped without extra padding (box_padding 1.0)."""
  aug = dict(flip=True, scale_factor=0.3, rotation_factor=15.0, rotation_prob=0.6,
             translate_factor=0.02, box_padding=1.0)
  aug.update(overrides)
  return ml_collections.ConfigDict(aug)


def integral_eval(batch_size: int) -> ml_collections.ConfigDict:
  """The integral family's `eval` block: flip test (integral-human-pose's `validNet`)."""
  return ml_collections.ConfigDict(dict(batch_size=batch_size, flip_test=True))


def sadinet_loss(chi: str = "sigma", rle_weight: float = 1.0, dlm: bool = True
                 ) -> ml_collections.ConfigDict:
  """The "topdown_rle" `loss` block (`jaxpose.rle_step`): SADI-Net eq. 8 with chi "sigma"
  (default), "sum" or "sigma_swapped" (Table V, `losses.rle.CHI_MODES`), plus rle_weight x
  the RLE loss (eq. 4); dlm False trains on L(H1) alone (Table III's RFM row)."""
  return ml_collections.ConfigDict(dict(chi=chi, rle_weight=rle_weight, dlm=dlm))


def synthetic_data(num_train_images: int = 2000, num_val_images: int = 200,
                   image_size: int = 256) -> ml_collections.ConfigDict:
  """A `synthetic` block: jaxpose's generated persons (`jaxpose.data.synthetic`); the
  defaults are the default run's set, so every config that uses them generates it once."""
  return ml_collections.ConfigDict(dict(num_train_images=num_train_images,
                                        num_val_images=num_val_images, image_size=image_size,
                                        seed=0, cache_dir="~/.cache/jaxpose"))


def mixture_component(source: str, keypoints: str, root: str = "", train_split: str = "train",
                      weight: float = 1.0, synthetic=None) -> ml_collections.ConfigDict:
  """One extra training dataset under `data.mixture.<name>` (`jaxpose.data.mixture`).

  source: a reader of `jaxpose.data.sources` ("mpii", "coco", "lsp_extended", ...) or
    "synthetic" (jaxpose's generated persons in the `keypoints` layout "mpii" or "coco").
  keypoints: the layout its files are in; records are remapped to `data.keypoints`.
  root: its folder; a relative path is taken from `data.root` ("../mpii" beside it).
  weight: its share of every batch is weight / (data.weight + the components' weights).
  synthetic: the generator's block (`synthetic_data()`), read only for source "synthetic".
  """
  return ml_collections.ConfigDict(dict(
      source=source, keypoints=keypoints, root=root, train_split=train_split,
      weight=float(weight), synthetic=synthetic_data() if synthetic is None else synthetic))


class MayBeAbsent:
  """A schema entry a config may leave out; when present it is checked as `kind`. Only for
  keys that configs written before them do not carry (`data.weight`, `data.mixture`)."""

  def __init__(self, kind):
    self.kind = kind


def mixture_component_schema() -> dict:
  """The keys and types of one `data.mixture` entry (`mixture_component`)."""
  return _types_of(mixture_component(source="", keypoints=""))


KINDS_WITH_SCHEMA = ("topdown", "bottomup", "integral", "topdown_rle", "integral_2d")
# The kinds whose train pipelines mix datasets (`jaxpose.data.mixture`).
KINDS_WITH_MIXTURES = ("topdown", "integral", "topdown_rle", "integral_2d")


def schema(kind: str = "topdown") -> dict:
  """Every key a config of model kind `kind` (`jaxpose.models.KINDS`) holds and its type;
  `jaxpose.config_check` checks configs against it.

  Leaves are types: `int` (not bool), `float` (an int will do), `bool`, `str`, `tuple`
  (a tuple or list of any length), `tuple[int, int]`, `dict` (free keys: `model.options` is
  checked against the model's own fields), `X | None` for a placeholder that may stay
  unset, and `MayBeAbsent(X)` for a key a config may leave out. The blocks built by the
  functions above bring their own keys and types, so a key added there is known here;
  `model`, `data` and `input`, which each config writes out, are declared here.
  """
  if kind not in KINDS_WITH_SCHEMA:
    raise ValueError(f"no config schema for model kind {kind!r}; known: {KINDS_WITH_SCHEMA}")
  shared = dict(
      seed=int,
      model=dict(name=str, dtype=str, remat=bool, options=dict,
                 **_types_of(pretrained_init())),
      data=dict(
          source=str, keypoints=str, root=str, tfds_dir=str, train_split=str, val_split=str,
          synthetic=dict(num_train_images=int, num_val_images=int, image_size=int, seed=int,
                         cache_dir=str)),
      input=dict(size_hw=tuple[int, int], batch_size=int, num_workers=int, read_threads=int,
                 prefetch_batches=int, device_prefetch=MayBeAbsent(int)),
      optim=_types_of(adam_step_schedule(base_lr=1.0, base_batch_size=1)),
      train=_types_of(train_loop(log_every_steps=1, checkpoint_every_steps=1)),
  )
  if kind in KINDS_WITH_MIXTURES:
    # weight: the main dataset's share beside `mixture`, a block of `mixture_component`s by
    # name (each checked against `mixture_component_schema()`). Both default to no mixture.
    shared["data"].update(weight=MayBeAbsent(float), mixture=MayBeAbsent(dict))
  if kind == "bottomup":
    return dict(shared, augment=_types_of(bottomup_augmentation()),
                targets=_types_of(bottomup_targets()), loss=_types_of(bottomup_loss()),
                eval=_types_of(bottomup_eval(batch_size=1, input_size=1, canvas_size=1)))
  if kind == "integral":
    shared["data"]["protocol"] = int
    return dict(shared, augment=_types_of(integral_augmentation()),
                eval=_types_of(integral_eval(batch_size=1)))
  # "integral_2d" (SAN 2D) has the top-down blocks: its crops, augmentation and evaluator are
  # the top-down ones (its loss reads no heatmaps; the pipeline still renders them).
  shared["input"]["heatmap_sigma"] = float
  if kind == "topdown_rle":
    return dict(shared, augment=_types_of(topdown_augmentation()),
                eval=_types_of(topdown_eval(batch_size=1)), loss=_types_of(sadinet_loss()))
  return dict(shared, augment=_types_of(topdown_augmentation()),
              eval=_types_of(topdown_eval(batch_size=1)))


def _types_of(block) -> dict:
  """Key -> type of a block's fields; a placeholder (None until set) keeps its declared type."""
  block = ml_collections.ConfigDict(block)
  types = {}
  for key, value in block.items():
    if isinstance(value, ml_collections.ConfigDict):
      types[key] = _types_of(value)
    else:
      kind = block.get_type(key)
      types[key] = kind | None if value is None else kind
  return types
