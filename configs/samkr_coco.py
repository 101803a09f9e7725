"""SAMKR (bottom-up keypoint regression with subspace attention) on COCO or CrowdPose.

Paper: "SAMKR" (../shared/papers/samkr.txt), Sec. IV-A: HRNet-W32 at 512x512 trained with
SWAHR's scale-adaptive heatmap loss, HRNet-W48 at 640x640 with DEKR's; offsets with DEKR's
normalised smooth-L1 (factor 0.03); rotation +-30 deg, scale 0.75-1.5, translation +-40 px
(DEKR's MAX_TRANSLATE 40 of its 200 px unit: 0.2 of the short side), flip; Adam 1e-3, x0.1
at epochs 90 and 120, 140 epochs. Test: DEKR's single-scale flip test (short side 512 /
640); DEKR's learned pose rescoring with `--config.eval.rescore_model=` (its released net, or
one fitted by `python -m jaxpose.tools.rescore`). ImageNet HRNet weights (DEKR's
MODEL.PRETRAINED) through `--config.model.init_from=hrnet_w32-36af842e.pth`.

  python -m jaxpose.launch --config configs/samkr_coco.py --config.data.root=/data/coco
  python -m jaxpose.launch --config configs/samkr_coco.py:backbone=w48
  python -m jaxpose.launch --config configs/samkr_coco.py:dataset=crowdpose \\
      --config.data.root=/data/crowdpose
  python -m jaxpose.launch --config configs/samkr_coco.py:variant=4_SAMKR_8
  python -m jaxpose.launch --config configs/samkr_coco.py:baseline      # DEKR itself
  python -m jaxpose.launch --config configs/samkr_coco.py:synthetic     # a CPU first look

Variants (`:ARGS`, comma-separated):
  backbone=w32|w48   HRNet width (input 512 / 640; loss "swahr" / "dekr", as Sec. IV-A)
  variant=NAME       a row of Tables 1-2 (`jaxpose.models.samkr.VARIANTS`); default 8_SAMKR_16
  dataset=coco|crowdpose  17 or 14 keypoints; CrowdPose trains on trainval, tests on test
  baseline           DEKR (its 15-channel AdaptBlock branches, no attention) in place of SAMKR
  synthetic          HRNet-W16, one module per stage, trained at 128x128 and tested at 192
                     (see below), synthetic multi-person data
  smoke              width 4, one HRNet stage, one regression branch at 64x64, 3 steps: a test
"""

import ml_collections

from configs import common

# The rows of `jaxpose.models.samkr.VARIANTS`: configs name choices, they do not import models.
_VARIANTS = {
    "8_SAMKR_272_single_branch": dict(num_subspaces=8, offset_channels_per_keypoint=272,
                                      single_branch=True),
    "1_SAMKR_16": dict(num_subspaces=1, offset_channels_per_keypoint=16),
    "16_SAMKR_16": dict(num_subspaces=16, offset_channels_per_keypoint=16),
    "2_SAMKR_16": dict(num_subspaces=2, offset_channels_per_keypoint=16),
    "4_SAMKR_16": dict(num_subspaces=4, offset_channels_per_keypoint=16),
    "8_SAMKR_16": dict(num_subspaces=8, offset_channels_per_keypoint=16),
    "8_SAMKR_8": dict(num_subspaces=8, offset_channels_per_keypoint=8),
    "8_SAMKR_24": dict(num_subspaces=8, offset_channels_per_keypoint=24),
    "4_SAMKR_8": dict(num_subspaces=4, offset_channels_per_keypoint=8),
    "12_SAMKR_24": dict(num_subspaces=12, offset_channels_per_keypoint=24),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, backbone=common.one_of("w32", "w48"),
                         variant=common.one_of("8_SAMKR_16", *_VARIANTS),
                         dataset=common.one_of("coco", "crowdpose"), baseline=False,
                         synthetic=False, smoke=False)
  crowdpose = arg.dataset == "crowdpose"
  synthetic = arg.synthetic or arg.smoke
  size = {"w32": 512, "w48": 640}[arg.backbone]
  c = ml_collections.ConfigDict()
  c.seed = 0

  swahr = arg.backbone == "w32" and not arg.baseline  # Sec. IV-A: SWAHR's loss for W32
  options = {} if arg.baseline else dict(_VARIANTS[arg.variant])
  if swahr:
    options["scale_head"] = True  # SWAHR's scale maps, which its loss reads
  # The keypoint branches, and a long HRNet stage's modules but the last, each as one
  # nn.scan (compile time, memory; False: the official per-keypoint / per-module trees).
  options.update(scan_branches=True, scan_modules=True)
  if arg.smoke:
    # One 4-branch HRNet stage and one regression branch (Table 1's c = m form) with one
    # AdaptBlock: every kind of layer, a short compile.
    options.update(width=4, heatmap_channels=4, stages=((1, 4, 1),), offset_blocks=1)
    if not arg.baseline:
      options.update(single_branch=True, num_subspaces=2, offset_channels_per_keypoint=8)
  elif arg.synthetic:
    # HRNet-W16 with one module per stage (HRNet-W18-small's shape): trains on this CPU.
    options.update(width=16, heatmap_channels=16, stages=((1, 2, 2), (1, 3, 2), (1, 4, 2)))
  c.model = dict(name=f"{'dekr' if arg.baseline else 'samkr'}_{arg.backbone}", dtype="float32",
                 # True recomputes each HR module and keypoint branch in the backward pass:
                 # W32 at 512, batch 8, 30.5 -> 10.3 GB of XLA temporaries for 29% more
                 # FLOPs (BUILD_NOTES, rematerialisation); what fits a 24 GB host.
                 remat=False,
                 options=options, **common.pretrained_init())

  c.data = dict(
      source="synthetic" if synthetic else arg.dataset,
      keypoints="crowdpose" if crowdpose and not synthetic else "coco",
      root="",  # COCO: holds annotations/ and the image folders; CrowdPose: json/ and images/
      tfds_dir="",
      train_split="trainval" if crowdpose else "train2017",  # DEKR trains CrowdPose on trainval
      val_split="test" if crowdpose else "val2017",
      # The default run's synthetic dataset (configs/default.py), so it is generated once.
      synthetic=dict(num_train_images=16 if arg.smoke else 2000,
                     num_val_images=4 if arg.smoke else 200, image_size=256, seed=0,
                     cache_dir="~/.cache/jaxpose"),
  )
  if synthetic:
    c.data.train_split, c.data.val_split = "train", "val"

  input_size = 64 if arg.smoke else 128 if arg.synthetic else size
  c.input = dict(
      size_hw=(input_size, input_size),
      # DEKR: 40 images per step (10 per GPU x 4 for W32, 5 x 8 for W48).
      batch_size=4 if arg.smoke else 16 if arg.synthetic else 40,
      num_workers=0 if synthetic else 8,
      read_threads=2,
      prefetch_batches=2,
      device_prefetch=2,  # global batches put on the devices ahead of the step
  )
  c.augment = common.bottomup_augmentation()
  # DEKR's CrowdPose centre heatmap is drawn with SIGMA (its generator tests idx < 17).
  c.targets = common.bottomup_targets(center_sigma=2.0 if crowdpose and not synthetic else 4.0)
  # Sec. IV-A: SWAHR's loss for W32, DEKR's for W48 (and for DEKR itself).
  c.loss = common.bottomup_loss("swahr" if swahr else "dekr")

  c.optim = common.adam_step_schedule(base_lr=1e-3, base_batch_size=40)
  c.train = common.train_loop(log_every_steps=1 if arg.smoke else 20 if arg.synthetic else 100,
                              checkpoint_every_steps=2 if arg.smoke else 200 if arg.synthetic
                              else 2000, eval_every_steps=100 if arg.synthetic else 0)
  if arg.smoke:
    c.train.total_steps = 3
    c.optim.decay_steps = (2,)
  elif arg.synthetic:
    c.optim.base_lr = 2.5e-3  # 1e-3 at batch 16
    c.train.total_steps = 600
    c.optim.decay_steps = (500, 560)
  else:
    c.train.total_epochs = 140.0
    c.optim.decay_epochs = (90.0, 120.0)

  # The synthetic run tests at 1.5x its training size (inside the scale augmentation's
  # 0.75-1.5): its persons are small in a 32x32 heatmap, and offsets read at 48x48 place
  # joints finer. Step-1000 checkpoint of the 2026-12-03 run (BUILD_NOTES): AP 0.040 tested
  # at 128, 0.168 at 192, 0.163 at 256.
  test_size = 192 if arg.synthetic else input_size
  c.eval = common.bottomup_eval(
      batch_size=2 if arg.smoke else 8, input_size=test_size,
      # One compile for every image: twice the short side holds aspect ratios up to 2:1
      # (larger images are resized to fit and counted in eval_images_shrunk).
      canvas_size=test_size if synthetic else 2 * input_size,
      num_visualize=1 if arg.smoke else 4,
      nms_min_joints=7 if crowdpose else 8)  # DEKR's TEST.NMS_NUM_THRE
  if arg.smoke:
    c.eval.flip_test = False  # one forward pass to compile (tests/test_bottomup_train.py flips)
  return c
