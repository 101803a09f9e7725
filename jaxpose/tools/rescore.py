"""`python -m jaxpose.tools.rescore`: fits DEKR's pose rescoring net for a bottom-up model.

DEKR's recipe (`tools/valid.py` with RESCORE.GET_DATA on the train split, then
`tools/train_scorenet.py`), in two commands:

  # 1. the trained model's poses on the train split (written as results_val_step<N>.json)
  python -m jaxpose.launch --config configs/samkr_coco.py --workdir runs/samkr --mode eval \\
      --config.data.root=/data/coco --config.data.val_split=train2017
  # 2. fit the net on them; then evaluate with --config.eval.rescore_model=runs/samkr/rescore.npz
  python -m jaxpose.tools.rescore \\
      --annotations /data/coco/annotations/person_keypoints_train2017.json \\
      --results runs/samkr/results_val_step140000.json --out runs/samkr/rescore.npz

Prints one line per epoch (mean MSE) and the file written. DEKR's released nets
(`final_rescore_coco_kpt.pth`, `final_rescore_crowd_pose_kpt.pth`) load directly as
`eval.rescore_model` too.
"""

from absl import flags

from jaxpose import cli as cli_lib
from jaxpose.errors import UserError
from jaxpose.evaluation import rescore

_ANNOTATIONS = flags.DEFINE_string("annotations", None, "Ground-truth keypoints json of the "
                                   "split the results were predicted on (COCO or CrowdPose).")
_RESULTS = flags.DEFINE_string("results", None, "Keypoint results json of the bottom-up model "
                               "on that split.")
_OUT = flags.DEFINE_string("out", None, "Where to write the net (.npz, the official state "
                           "dict's keys).")
_KEYPOINTS = flags.DEFINE_enum("keypoints", "coco", ["coco", "crowdpose"],
                               "Keypoint set: selects the limbs of the features and the OKS rules.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "RESCORE.END_EPOCH.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "RESCORE.BATCHSIZE.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "RESCORE.LR (Adam).")
_HIDDEN = flags.DEFINE_integer("hidden", rescore.HIDDEN, "RESCORE.HIDDEN_LAYER.")
_SEED = flags.DEFINE_integer("seed", 0, "Init and shuffling seed.")


def _fail(message: str) -> None:
  cli_lib.fail("jaxpose.tools.rescore", message)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; see --help")
  for flag in (_ANNOTATIONS, _RESULTS, _OUT):
    if not flag.value:
      _fail(f"--{flag.name} is required")
  if not _OUT.value.endswith(".npz"):
    _fail(f"--out {_OUT.value}: the net is written as .npz")
  try:
    poses, oks = rescore.training_rows(_ANNOTATIONS.value, _RESULTS.value, _KEYPOINTS.value)
    print(f"{len(oks)} training rows (3 per detection, as DEKR's dump), mean OKS "
          f"{oks.mean():.3f}", flush=True)
    params, losses = rescore.fit(rescore.pose_features(poses, _KEYPOINTS.value), oks,
                                 hidden=_HIDDEN.value, learning_rate=_LR.value,
                                 epochs=_EPOCHS.value, batch_size=_BATCH.value,
                                 seed=_SEED.value)
  except UserError as e:
    _fail(str(e))
  for epoch, loss in enumerate(losses, 1):
    print(f"epoch {epoch}/{len(losses)}  train MSE {loss:.5f}")
  rescore.save(_OUT.value, params)
  print(f"wrote {_OUT.value}")


def cli() -> None:
  cli_lib.run_without_config("jaxpose.tools.rescore", main)


if __name__ == "__main__":
  cli()
