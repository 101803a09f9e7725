"""`python -m jaxpose.predict`: run a trained top-down run on images and draw the skeletons.

  python -m jaxpose.predict --workdir runs/default --split val --num_images 3 --out /tmp/poses
  python -m jaxpose.predict --workdir runs/default --images a.jpg b.png --out /tmp/poses
  python -m jaxpose.predict --workdir runs/default --images a.jpg --boxes boxes.json --out /tmp/p

Restores the run's latest checkpoint and predicts with the run's own config (`config.json` in
the workdir: input size, flip test, `eval.multi_scale`, `eval.decode`, rescoring and OKS-NMS).
Writes one PNG per image with the predicted skeletons and person scores drawn, and
`results.json` in the COCO keypoint results format.

Person boxes: `--split` images use their labelled persons' boxes, or with `--boxes` the boxes
of that COCO detection results json. `--images` without `--boxes` takes each whole image as one
person box (padded by `augment.box_padding` like any box); with `--boxes`, a detection's
`image_id` k is the k-th image listed (1-based), the ids `results.json` uses too.
"""

import argparse
import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

from jaxpose.errors import UserError


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
  """The resolved config a run saved (`workdir/config.json`), JSON lists back as tuples.

  `eval` keys added after the run was made take their `configs.common.topdown_eval` defaults,
  so older runs keep working.
  """
  from configs import common  # pylint: disable=g-import-not-at-top
  path = workdir / "config.json"
  if not path.is_file():
    raise UserError(f"--workdir {workdir}: no config.json; not a jaxpose run directory")
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read the run's config ({e})") from None

  def as_tuples(value):
    if isinstance(value, dict):
      return {k: as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(as_tuples(v) for v in value)
    return value

  config = ml_collections.ConfigDict(as_tuples(data))
  if "eval" in config:
    for key, value in common.topdown_eval(batch_size=1).items():
      if key not in config.eval:
        config.eval[key] = value
  return config


class _RecordSubset:
  """The records of `source` at `indices`, as a source of their own."""

  def __init__(self, source, indices: list[int]):
    self.source, self.indices, self.spec = source, indices, source.spec
    self.records = [source.records[i] for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict:
    return self.source[self.indices[index]]


def _split_persons(config, split: str, num_images: int, boxes: str | None):
  """(source, [(image_id, image_path)]) for the first `num_images` images of a split."""
  from jaxpose.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxpose.evaluation import detections  # pylint: disable=g-import-not-at-top
  ground_truth = pipeline.open_split(config, split)
  paths = {r.image_id: r.image_path for r in ground_truth.records}
  image_ids = sorted(paths)[:num_images]
  if boxes:
    source = detections.split_detection_boxes(
        boxes, ground_truth.annotation_file, ground_truth.image_dir, ground_truth.spec,
        config.eval.box_score_threshold, set(image_ids))
  else:
    wanted = set(image_ids)
    source = _RecordSubset(ground_truth, [i for i, r in enumerate(ground_truth.records)
                                          if r.image_id in wanted])
  return source, [(image_id, paths[image_id]) for image_id in image_ids]


def _image_persons(config, image_paths: list[str], boxes: str | None):
  """(source, [(image_id, image_path)]) for the user's own images, ids 1..N in order."""
  from jaxpose.data import image_io  # pylint: disable=g-import-not-at-top
  from jaxpose.data import keypoints as keypoints_lib  # pylint: disable=g-import-not-at-top
  from jaxpose.evaluation import detections  # pylint: disable=g-import-not-at-top
  spec = keypoints_lib.get_spec(config.data.keypoints)
  images = {}
  for image_id, path in enumerate(image_paths, start=1):
    image, problem = image_io.read_image(path)
    if problem:
      raise UserError(f"--images {path}: {problem[1]}")
    images[image_id] = (str(path), (image.shape[1], image.shape[0]))
  if boxes:
    source = detections.detection_boxes(
        boxes, images, spec, config.eval.box_score_threshold,
        images_from=f"--images (ids 1 to {len(images)}, in the order listed)")
  else:
    source = detections.PersonBoxes(
        [detections.BoxRecord(path, image_id, np.array([0, 0, *image_wh], np.float32), 1.0,
                              image_wh) for image_id, (path, image_wh) in images.items()],
        spec, "whole images")
  return source, [(image_id, path) for image_id, (path, _) in images.items()]


def _png_names(image_paths: list[str]) -> list[str]:
  """`<stem>.png` per image; a repeated stem gets `_2`, `_3`, ... so nothing is overwritten."""
  names, seen = [], {}
  for path in image_paths:
    stem = Path(path).stem
    seen[stem] = seen.get(stem, 0) + 1
    names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
  return names


def run(workdir: str | Path, out: str | Path, *, images: list[str] | None = None,
        split: str | None = None, num_images: int = 3, boxes: str | None = None) -> list[Path]:
  """Predicts and draws; returns the PNG paths (`out/results.json` holds the keypoints).

  Exactly one of `images` (paths) and `split` (e.g. "val") is given.
  """
  if (images is None) == (split is None):
    raise UserError("give exactly one of --images and --split")
  if split is not None and num_images < 1:
    raise UserError(f"--num_images {num_images}: must be at least 1")
  workdir = Path(workdir).expanduser()
  config = load_run_config(workdir)
  checkpoints = workdir / "checkpoints"
  # Checked before orbax opens the folder, which would create it.
  if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
    raise UserError(f"--workdir {workdir}: no checkpoint in {checkpoints}; train first")
  out = Path(out).expanduser()
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"--out {out}: cannot create it ({e.strerror or e})") from None

  # Imported here so that `--help` and argument errors stay fast.
  import jax  # pylint: disable=g-import-not-at-top
  from jaxpose import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from jaxpose import config_check  # pylint: disable=g-import-not-at-top
  from jaxpose import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from jaxpose import train  # pylint: disable=g-import-not-at-top
  from jaxpose import visualize  # pylint: disable=g-import-not-at-top
  from jaxpose.data import image_io  # pylint: disable=g-import-not-at-top
  from jaxpose.evaluation import coco_eval  # pylint: disable=g-import-not-at-top
  from jaxpose.evaluation import topdown  # pylint: disable=g-import-not-at-top

  config_check.validate(config)
  if split is not None:
    source, image_list = _split_persons(config, split, num_images, boxes)
  else:
    source, image_list = _image_persons(config, images, boxes)
  mesh = mesh_lib.make_data_mesh()
  model = train.build_model(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    state = train.restore_for_eval(config, model, mesh, checkpointer)
  finally:
    checkpointer.close()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  predictions = topdown.predict_keypoints(config, model, variables, mesh, source)
  results = coco_eval.rescore_and_nms(
      image_ids=predictions["image_id"], keypoints=predictions["keypoints"],
      box_scores=topdown.box_scores(source, predictions["record_index"]),
      areas=np.prod(predictions["scale_wh"], axis=1), oks_sigmas=source.spec.oks_sigmas,
      in_vis_threshold=config.eval.keypoint_score_threshold,
      oks_threshold=config.eval.oks_nms_threshold)
  if jax.process_index() != 0:
    return []
  coco_eval.write_results(results, out / "results.json")
  written = []
  names = _png_names([path for _, path in image_list])
  for (image_id, path), name in zip(image_list, names):
    image, problem = image_io.read_image(path)
    if problem:
      raise UserError(f"{path}: {problem[1]}")
    mine = [r for r in results if r["image_id"] == image_id]
    drawn = visualize.draw_predictions(
        image, np.reshape([r["keypoints"] for r in mine], (-1, source.spec.num_keypoints, 3)),
        np.array([r["score"] for r in mine]), source.spec.skeleton,
        config.eval.keypoint_score_threshold)
    visualize.save_png(out / name, drawn)
    written.append(out / name)
  return written


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m jaxpose.predict", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  parser.add_argument("--workdir", required=True, help="a jaxpose run directory")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--images", nargs="+", metavar="IMAGE", help="image files to predict on")
  what.add_argument("--split", help="the first --num_images images of this split of the run's "
                    "dataset (e.g. val)")
  parser.add_argument("--num_images", type=int, default=3, help="with --split (default 3)")
  parser.add_argument("--boxes", help="COCO detection results json of person boxes")
  parser.add_argument("--out", required=True, help="folder for the PNGs and results.json")
  args = parser.parse_args(argv)
  try:
    written = run(args.workdir, args.out, images=args.images, split=args.split,
                  num_images=args.num_images, boxes=args.boxes)
  except UserError as e:
    print(f"jaxpose.predict: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  for path in written:
    print(path)
  print(f"keypoints: {Path(args.out) / 'results.json'}")


if __name__ == "__main__":
  main()
