"""SAN (ResNet + self-attention + integral regression) on MPII and COCO, 2D.

Paper: "Self-Attention Network for Human Pose Estimation" (../shared/papers/san.txt),
Sec. 3.4-3.5 and 4.3 (Tables 4-5: MPII PCKh@0.5 91.7 on the valid split, COCO test-dev AP
71.8). Trained as integral-human-pose trains 2D data: soft-argmax coordinates of the K
heatmaps, L1 to the labelled joints (model kind "integral_2d", `jaxpose/integral2d_step.py`)
on the top-down person crops (HRNet's MPII centre/scale, COCO boxes x 1.25 at the input's
aspect ratio: also integral-human-pose's readers). Recipe (Sec. 3.5): Adam lr 1e-4 at batch
32, x0.1 at epochs 170 and 190, 200 epochs; flip, rotation +-30 deg (clip(N(0, 15), -30,
30) with p 0.6) and scale +-30 % (clip(N(1, 0.3), 0.7, 1.3)), integral-human-pose's
samplers; flip test (the flipped crop's coordinates mirrored back and averaged). ImageNet
weights through `--config.model.init_from=resnet50.pth`.

  python -m jaxpose.launch --config configs/san_2d.py --config.data.root=/data/mpii
  python -m jaxpose.launch --config configs/san_2d.py:dataset=coco,backbone=r152 \\
      --config.data.root=/data/coco
  python -m jaxpose.launch --config configs/san_2d.py:dataset=coco --config.data.root=/data/coco \\
      --config.eval.person_boxes=/data/coco/COCO_val2017_detections_AP_H_56_person.json
  python -m jaxpose.launch --config configs/san_2d.py:synthetic   # a CPU first look

Variants (`:ARGS`, comma-separated):
  dataset=mpii|coco  MPII: 16 joints, HRNet's annot/{train,valid}.json, PCKh against
                     gt_valid.mat; 256x256 crops (64x64 maps), R152 288x288 (72x72 maps:
                     Sec. 3.5's "72 x 72 for ResNet-152" on MPII's square crop frame).
                     COCO: 17 joints, train2017 / val2017, OKS AP; R50 256x192, R152 384x288
                     (Sec. 3.5's "288 x 384"). Person boxes: ground truth by default, or a
                     detection results json by `eval.person_boxes`.
  backbone=r50|r152
  synthetic          ResNet-18, 3 x 128 deconvs at 64x64 (16x16 maps), batch 32, Adam 1e-3
                     from scratch, lighter augmentation, on jaxpose's synthetic persons (the
                     COCO layout of configs/default.py's data, or with dataset=mpii its MPII
                     relabelling, `data/synthetic_mpii.py`), evaluated every 100 steps
  smoke              ResNet-18, 3 x 16 deconvs at 64x64, 3 steps: a test run

Not in the top-down pipeline: Sec. 3.5's translation +-2 % (BUILD_NOTES); test-time image
pyramids (`eval.multi_scale`: the coordinates are regressed from one crop). Joint scores are
1, as integral-human-pose's `get_joint_location_result`, so COCO rescoring keeps the box score.
"""

import ml_collections

from configs import common

# (height, width) of the network input per dataset and backbone.
_INPUT_HW = {("mpii", "r50"): (256, 256), ("mpii", "r152"): (288, 288),
             ("coco", "r50"): (256, 192), ("coco", "r152"): (384, 288)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset=common.one_of("mpii", "coco"),
                         backbone=common.one_of("r50", "r152"), synthetic=False, smoke=False)
  synthetic = arg.synthetic or arg.smoke
  mpii = arg.dataset == "mpii"
  c = ml_collections.ConfigDict()
  c.seed = 0

  if arg.smoke:
    options = dict(depth=18, num_deconv_filters=(16, 16, 16))
  elif arg.synthetic:
    options = dict(depth=18, num_deconv_filters=(128, 128, 128))
  else:
    options = {}
  c.model = dict(name=f"san_{arg.backbone}", dtype="float32", remat=False, options=options,
                 **common.pretrained_init())

  if mpii:
    splits = dict(train_split="train", val_split="valid")  # valid: what gt_valid.mat scores
  else:
    splits = dict(train_split="train" if synthetic else "train2017",
                  val_split="val" if synthetic else "val2017")
  c.data = dict(
      source="synthetic" if synthetic else arg.dataset,
      keypoints=arg.dataset,
      root="",  # MPII: holds annot/ and images/ (HRNet's data/mpii); COCO: annotations/, images
      tfds_dir="",  # source="tfds": the --dst of `python -m jaxpose.data.prepare`
      **splits,
      # The default run's synthetic dataset (configs/default.py), so it is generated once.
      synthetic=common.synthetic_data(16, 4) if arg.smoke else common.synthetic_data(),
  )

  c.input = dict(
      size_hw=(64, 64) if synthetic else _INPUT_HW[arg.dataset, arg.backbone],
      # Read only by the shared top-down pipeline, whose heatmaps this model kind drops.
      heatmap_sigma=2.0,
      batch_size=4 if arg.smoke else 32,
      num_workers=0 if synthetic else 8,
      read_threads=2,
      prefetch_batches=2,
      device_prefetch=2,  # global batches put on the devices ahead of the step
  )
  if arg.synthetic:  # the synthetic figures are already rotated and scaled (configs/default.py)
    c.augment = common.topdown_augmentation(scale_factor=0.15, rotation_factor=10.0,
                                            rotation_prob=0.6, half_body_prob=0.0,
                                            translate_factor=0.02)
  else:
    c.augment = common.topdown_augmentation(scale_factor=0.3, rotation_factor=15.0,
                                            rotation_prob=0.6, half_body_prob=0.0,
                                            translate_factor=0.02)

  c.optim = common.adam_step_schedule(base_lr=1e-4, base_batch_size=32)
  c.train = common.train_loop(log_every_steps=1 if arg.smoke else 20 if arg.synthetic else 100,
                              checkpoint_every_steps=2 if arg.smoke else 100 if arg.synthetic
                              else 2000, eval_every_steps=100 if arg.synthetic else 0)
  if arg.smoke:
    c.train.total_steps = 3
    c.optim.decay_steps = (2,)
  elif arg.synthetic:
    c.optim.base_lr = 1e-3  # from scratch (no ImageNet weights offline), as san_h36m.py
    c.train.total_steps = 600
    c.optim.decay_steps = (500, 570)
  else:
    c.train.total_epochs = 200.0
    c.optim.decay_epochs = (170.0, 190.0)

  c.eval = common.topdown_eval(batch_size=2 if arg.smoke else 32 if synthetic else 64,
                               num_visualize=0 if arg.smoke else 4)
  return c
