"""SAN (ResNet + self-attention + integral regression) on Human3.6M, 3D.

Paper: "Self-Attention Network for Human Pose Estimation" (../shared/papers/san.txt),
Sec. 3.4-3.5 and Table 1: row a trains on Human3.6M alone (`mix=none`), rows b-c mix MPII
into every batch (`mix=mpii`), rows d-g MPII and COCO (`mix=mpii_coco`). Recipe: Adam lr
1e-4 at batch 32 (the paper; integral-human-pose's R50 Human3.6M yamls use 1e-3 at batch 32
and its R152 384x288 yaml 1e-4), x0.1 at epochs 170 and 190, 200 epochs; flip, rotation
+-30 deg, scale +-30 %, translation +-2 % (Sec. 3.5, with integral-human-pose's samplers:
`common.integral_augmentation`); flip test. Input: R50 at
256x256 -> 64x64 maps, 64 depth bins (Table 1's 64 x 64 for ResNet-50 and integral-human-
pose's R50 `patch_width: 256`); R152 at 288 wide x 384 high (Sec. 3.5's "288 x 384") -> 72 x
96 maps, 72 depth bins. ImageNet weights through `--config.model.init_from=resnet50.pth`.

  python -m jaxpose.launch --config configs/san_h36m.py --config.data.root=/data/h36m
  python -m jaxpose.launch --config configs/san_h36m.py:protocol=2,backbone=r152 \\
      --config.data.root=/data/h36m
  python -m jaxpose.launch --config configs/san_h36m.py:mix=mpii --config.data.root=/data/h36m
  python -m jaxpose.launch --config configs/san_h36m.py:synthetic   # a CPU first look

`data.root` holds RLE's `annotations/Sample_trainmin_train_Human36M_protocol_{1,2}.json`,
`Sample_64_test_Human36M_protocol_{1,2}.json` and `images/` (`jaxpose/data/h36m.py`).

Variants (`:ARGS`, comma-separated):
  protocol=1|2     1: train S1,5,6,7,8, test S9,11 (MPJPE); 2: train + S9, test S11 (PA-MPJPE)
  backbone=r50|r152
  mix=none|mpii|mpii_coco
                   2D data in every batch (SAN's joint 2D/3D training, Sec. 3.4), remapped to
                   the 17 Human3.6M joints (MPII feeds 15, COCO 13: `keypoints.layout_map`),
                   depth weight 0; weights equal, as integral-human-pose @ad3f875 mixes them
                   (`mpii_hm36_Dataset`: as many Human3.6M frames as MPII persons per epoch;
                   hm36_challenge `mpii_coco_hm36_eccv_challenge_Dataset`: MPII, COCO and
                   Human3.6M 1:1:1). Folders `../mpii` (HRNet's MPII layout) and `../coco`
                   beside data.root (`--config.data.mixture.mpii.root=...` moves them).
                   With synthetic: jaxpose's synthetic persons in the MPII / COCO layout.
  synthetic        ResNet-18, 3 x 128 deconvs, 16 depth bins at 64x64 (96 px frames), batch 32,
                   900 steps, lighter augmentation, on jaxpose's synthetic Human3.6M frames
                   (`jaxpose/data/synthetic_h36m.py`), evaluated at step 0 and every 100
                   steps: the CPU first look (BUILD_NOTES)
  smoke            ResNet-18, 3 x 16 deconvs, 8 depth bins at 32x32, 3 steps: a test run
"""

import ml_collections

from configs import common


def _mixture(mix: str, synthetic: bool, smoke: bool) -> dict:
  """The 2D datasets of Table 1's rows, each weighted as Human3.6M (integral-human-pose)."""
  names = {"none": (), "mpii": ("mpii",), "mpii_coco": ("mpii", "coco")}[mix]
  if synthetic:  # the synthetic persons (the smoke run's tiny set), relabelled for MPII
    block = common.synthetic_data(16, 4) if smoke else common.synthetic_data()
    return {name: common.mixture_component("synthetic", keypoints=name, synthetic=block)
            for name in names}
  splits = {"mpii": "train", "coco": "train2017"}
  return {name: common.mixture_component(name, keypoints=name, root=f"../{name}",
                                         train_split=splits[name]) for name in names}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, protocol=common.one_of(1, 2), backbone=common.one_of("r50", "r152"),
                         mix=common.one_of("none", "mpii", "mpii_coco"), synthetic=False,
                         smoke=False)
  synthetic = arg.synthetic or arg.smoke
  c = ml_collections.ConfigDict()
  c.seed = 0

  if arg.smoke:
    options = dict(depth=18, depth_bins=8, num_deconv_filters=(16, 16, 16))
  elif arg.synthetic:
    options = dict(depth=18, depth_bins=16, num_deconv_filters=(128, 128, 128))
  else:
    options = {}
  c.model = dict(name=f"san_{arg.backbone}_3d", dtype="float32", remat=False, options=options,
                 **common.pretrained_init())

  c.data = dict(
      source="synthetic" if synthetic else "h36m",
      keypoints="h36m",
      protocol=arg.protocol,
      root="",
      tfds_dir="",
      train_split="train",
      val_split="test",
      # Frames for the train subjects (S1-S8) and for the test subjects (S9, S11).
      synthetic=dict(num_train_images=10 if arg.smoke else 3000,
                     num_val_images=4 if arg.smoke else 200,
                     image_size=64 if arg.smoke else 96, seed=0, cache_dir="~/.cache/jaxpose"),
      weight=1.0,
      mixture=_mixture(arg.mix, synthetic, arg.smoke),
  )

  size_hw = {"r50": (256, 256), "r152": (384, 288)}[arg.backbone]
  if synthetic:
    size_hw = (32, 32) if arg.smoke else (64, 64)
  c.input = dict(size_hw=size_hw, batch_size=4 if arg.smoke else 32,
                 num_workers=0 if synthetic else 8, read_threads=2, prefetch_batches=2,
                 device_prefetch=2)
  # The synthetic frames already vary scale and pose; lighter augmentation for a short run.
  c.augment = (common.integral_augmentation(scale_factor=0.15, rotation_factor=10.0)
               if arg.synthetic else common.integral_augmentation())
  c.optim = common.adam_step_schedule(base_lr=1e-4, base_batch_size=32)
  c.train = common.train_loop(log_every_steps=1 if arg.smoke else 50 if arg.synthetic else 100,
                              checkpoint_every_steps=2 if arg.smoke else 100 if arg.synthetic
                              else 2000, eval_every_steps=100 if arg.synthetic else 0,
                              # the step-0 MPJPE the synthetic run's target halves
                              eval_at_start=arg.synthetic)
  if arg.smoke:
    c.train.total_steps = 3
    c.optim.decay_steps = (2,)
  elif arg.synthetic:
    # From scratch (no ImageNet weights offline): a larger rate, 1e-3 at batch 32.
    c.optim.base_lr = 1e-3
    c.train.total_steps = 900
    c.optim.decay_steps = (750, 850)
  else:
    c.train.total_epochs = 200.0
    c.optim.decay_epochs = (170.0, 190.0)
  c.eval = common.integral_eval(batch_size=4 if arg.smoke else 32)
  return c
