"""The no-argument run: SimpleBaseline-R18 at 128x96 on jaxpose's synthetic COCO-format data.

Paper: Xiao et al., "Simple Baselines for Human Pose Estimation and Tracking"
(arXiv:1804.06208), at a size that trains from scratch on a 2-core CPU in minutes: the
ResNet-18 backbone with a 3 x 128-filter deconvolution head (the paper's is 3 x 256), batch
16, and augmentation toned down for figures that are already rotated and scaled by the
generator. The COCO recipe itself is `configs.common.topdown_augmentation()` unchanged.

  python -m jaxpose.launch                                  # this config, workdir runs/default
  python -m jaxpose.launch --config configs/default.py:smoke --workdir /tmp/smoke

Expected on a 2-core CPU (BUILD_NOTES.md has the measured run): about 7 minutes for
training and evaluation; AP on the synthetic val split in BUILD_NOTES.md.

Variants (`--config configs/default.py:ARGS`):
  smoke      ResNet-18 with a 16-filter head, 64x64 input, a few steps: a test and CI run.

From torchvision's ImageNet ResNet-18 (the papers' initialisation; the head stays fresh):
  python -m jaxpose.launch --config.model.init_from=resnet18-f37072fd.pth
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = dict(name="simplebaseline_r18", dtype="float32", remat=False,
                 options=dict(num_deconv_filters=(16, 16, 16) if arg.smoke else (128, 128, 128)),
                 **common.pretrained_init())

  c.data = dict(
      source="synthetic",
      keypoints="coco",
      root="",  # source="coco": the folder holding annotations/ and the image folders
      tfds_dir="",  # source="tfds": the --dst of `python -m jaxpose.data.prepare`
      train_split="train",
      val_split="val",
      synthetic=dict(
          num_train_images=64 if arg.smoke else 2000,
          num_val_images=8 if arg.smoke else 200,
          image_size=256,
          seed=0,
          cache_dir="~/.cache/jaxpose",
      ),
  )

  c.input = dict(
      size_hw=(64, 64) if arg.smoke else (128, 96),  # H and W multiples of 32 (ResNet stride)
      heatmap_sigma=1.0 if arg.smoke else 2.0,
      batch_size=8 if arg.smoke else 16,
      num_workers=0,  # grain worker processes; 0 = read in threads of this process
      read_threads=2,
      prefetch_batches=2,
      device_prefetch=2,  # global batches put on the devices ahead of the step
  )
  # Synthetic figures already carry +-30 deg rotation and a 60-220 px height range.
  c.augment = common.topdown_augmentation(
      rotation_factor=20.0, scale_factor=0.25, half_body_prob=0.0)

  c.optim = common.adam_step_schedule(base_lr=2e-3, base_batch_size=32)  # 1e-3 at batch 16
  c.train = common.train_loop(log_every_steps=1 if arg.smoke else 20,
                              checkpoint_every_steps=5 if arg.smoke else 120)
  if arg.smoke:
    c.train.total_steps = 6
    c.optim.decay_steps = (4,)
  else:
    c.train.total_steps = 660
    c.optim.decay_steps = (550, 620)

  c.eval = common.topdown_eval(batch_size=16 if arg.smoke else 64)
  return c
