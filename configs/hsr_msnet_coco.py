"""HSR-MSNet / HSRNet / SimpleBaseline top-down on COCO 2017 keypoints (HSR-MSNet paper, Table 1).

Paper: "HSR-MSNet: High Spatial Resolution and Multiscale Networks" (../shared/papers/
hsr-msnet.txt), Sec. 4.2 recipe: Adam, batch 32, 140 epochs, lr 1e-4 decayed x0.1 at epochs
90 and 120; ground-truth boxes for training; flip test. ImageNet backbone weights through
`--config.model.init_from`: DetNet-59 for HSRNet-59, torchvision ResNets for the
SimpleBaseline rows; HSR-MSNet's MSNet blocks have no released ImageNet checkpoint.

  python -m jaxpose.launch --config configs/hsr_msnet_coco.py:depth=59,res=256 \\
      --config.data.root=/data/coco
  python -m jaxpose.launch --config configs/hsr_msnet_coco.py:depth=110,res=384,msnet=False
  python -m jaxpose.launch --config configs/hsr_msnet_coco.py:baseline=True,depth=50

Variants (`:ARGS`, comma-separated):
  depth=59|110|161  HSR(-MS)Net depth; with baseline=True: 50|101|152 (SimpleBaseline-R*)
  msnet=True        MSNet blocks in the first four stages (False: HSRNet, DetNet blocks)
  res=256|384       input 256x192 or 384x288
  deconv_kernel=4   kernel of the two deconvolutions (Table 1: 4, 3 or 2)
  synthetic         128x96 on jaxpose's synthetic data, as configs/default.py: the CPU
                    first look of BUILD_NOTES (HSR-MSNet-59 reaches OKS AP >= 0.3)
  smoke             one block per stage at 64x64, two steps: a test and CI run
Expected: the paper reports COCO test-dev 72.6 / 72.8 AP (256x192 / 384x288) with
its person detector; jaxpose evaluates with ground-truth boxes until detection-json input
lands (issue #4). The paper's lr 1e-4 is kept; the SimpleBaseline official recipe is 1e-3.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, depth=59, msnet=True, res=common.one_of(256, 384),
                         deconv_kernel=4, baseline=False, synthetic=False, smoke=False)
  synthetic = arg.synthetic or arg.smoke
  c = ml_collections.ConfigDict()
  c.seed = 0

  if arg.baseline:
    name, options = f"simplebaseline_r{arg.depth}", dict(deconv_kernel=arg.deconv_kernel)
  else:
    name = f"{'hsr_msnet' if arg.msnet else 'hsrnet'}{arg.depth}"
    options = dict(deconv_kernel=arg.deconv_kernel)
  if arg.smoke:  # one block per stage, narrow deconvolutions: the same layers, a short compile
    options.update(num_deconv_filters=(16, 16))
    if not arg.baseline:
      options.update(stage_sizes=(1, 1, 1, 1, 1))
  c.model = dict(name=name, dtype="float32", remat=False, options=options,
                 **common.pretrained_init())

  c.data = dict(
      source="synthetic" if synthetic else "coco",
      keypoints="coco",
      root="",
      tfds_dir="",  # source="tfds": the --dst of `python -m jaxpose.data.prepare`
      train_split="train" if synthetic else "train2017",
      val_split="val" if synthetic else "val2017",
      # :synthetic shares configs/default.py's dataset, so it is generated once.
      synthetic=dict(num_train_images=2000 if arg.synthetic else 64,
                     num_val_images=200 if arg.synthetic else 8, image_size=256, seed=0,
                     cache_dir="~/.cache/jaxpose"),
  )
  size_hw = {256: (256, 192), 384: (384, 288)}[arg.res]
  c.input = dict(
      size_hw=(64, 64) if arg.smoke else (128, 96) if arg.synthetic else size_hw,
      # HRNet's COCO yamls: sigma 2 at 256x192, 3 at 384x288.
      heatmap_sigma=2.0 if arg.res == 256 else 3.0,
      batch_size=4 if arg.smoke else 16 if arg.synthetic else 32,
      num_workers=0 if synthetic else 8,
      read_threads=2,
      prefetch_batches=2,
      device_prefetch=2,  # global batches put on the devices ahead of the step
  )
  c.augment = common.topdown_augmentation()
  if arg.synthetic:  # the synthetic figures are already rotated and scaled (configs/default.py)
    c.augment = common.topdown_augmentation(rotation_factor=20.0, scale_factor=0.25,
                                            half_body_prob=0.0)

  c.optim = common.adam_step_schedule(base_lr=1e-4, base_batch_size=32)
  c.train = common.train_loop(log_every_steps=1 if arg.smoke else 20 if arg.synthetic else 100,
                              checkpoint_every_steps=2 if arg.smoke else 100 if arg.synthetic
                              else 2000, eval_every_steps=100 if arg.synthetic else 0)
  if arg.smoke:
    c.train.total_steps = 2
    c.optim.decay_steps = (1,)
  elif arg.synthetic:
    c.optim.base_lr = 2e-3  # 1e-3 at batch 16, as configs/default.py
    c.train.total_steps = 400
    c.optim.decay_steps = (330, 380)
  else:
    c.train.total_epochs = 140.0
    c.optim.decay_epochs = (90.0, 120.0)

  c.eval = common.topdown_eval(batch_size=4 if arg.smoke else 64,
                               num_visualize=2 if arg.smoke else 4)
  if arg.smoke:
    c.eval.flip_test = False  # one forward pass to compile (test_launch.py covers the flip test)
  return c
