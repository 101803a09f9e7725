"""Top-down evaluation on the val split, with ground-truth or detected person boxes.

Crops every person box (`eval.person_boxes`: the labelled persons, or a detector's results
json read by `detections.split_detection_boxes`), runs the jitted predict step (flip test,
`eval.multi_scale` image pyramid, argmax + quarter-pixel or DARK refinement; SAN's soft-argmax
coordinates for "integral_2d" models, `integral2d_step`), maps keypoints back to image
pixels, rescores (box score x mean confident keypoint score) and OKS-NMSes per image as
HRNet's `COCODataset.evaluate`, writes the COCO results json and scores it with pycocotools.
MPII and LSP (single-person benchmarks, no boxes) skip rescoring and NMS and are scored per
annotated person: PCKh against HRNet's gt_valid.mat, PCK@0.2 against LSP's joints.mat
(`score_by_position`).
"""

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from jaxpose import integral2d_step
from jaxpose import mesh as mesh_lib
from jaxpose import models
from jaxpose import step as step_lib
from jaxpose import visualize
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.data import image_io
from jaxpose.data import pipeline
from jaxpose.errors import UserError
from jaxpose.evaluation import coco_eval
from jaxpose.evaluation import detections
from jaxpose.evaluation import lsp_eval
from jaxpose.evaluation import mpii_eval

# Single-person benchmarks scored per annotated person, in file order, instead of COCO AP.
_SCORED_BY_POSITION = ("mpii", "lsp")


def predict_options(config) -> dict:
  """`make_predict_step`'s test-time options from the `eval` block, checked (UserError
  naming the key)."""
  if config.eval.decode not in heatmap_codec.DECODERS:
    raise UserError(f"config key eval.decode: unknown {config.eval.decode!r}; known: "
                    f"{list(heatmap_codec.DECODERS)}")
  scales = tuple(config.eval.multi_scale)
  if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
             for s in scales):
    raise UserError(f"config key eval.multi_scale: {scales!r} must be positive scale factors "
                    "(or () for one scale)")
  return dict(scales=tuple(float(s) for s in scales), decode=config.eval.decode,
              dark_blur_kernel_size=heatmap_codec.dark_blur_kernel_size(config.input.heatmap_sigma))


def open_person_boxes(config, ground_truth, image_ids=None):
  """The source of person boxes to crop: `ground_truth` itself for `eval.person_boxes` "gt",
  else the boxes of that detection results json on `ground_truth`'s images (optionally only
  those on `image_ids`)."""
  if config.eval.person_boxes == "gt":
    return ground_truth
  return detections.split_detection_boxes(
      os.path.expanduser(config.eval.person_boxes), ground_truth.annotation_file,
      ground_truth.image_dir, ground_truth.spec, config.eval.box_score_threshold, image_ids)


def box_scores(source, record_index: np.ndarray) -> np.ndarray:
  """[N] detector scores of the given records; 1 for ground-truth boxes (as HRNet)."""
  if isinstance(source, detections.PersonBoxes):
    return source.scores[record_index]
  return np.ones(len(record_index))


def make_predict_step(config, model, flip_index, options: dict):
  """The model kind's `predict_step(variables, images) -> (xy in heatmap pixels, scores)`:
  the heatmap argmax, or for "integral_2d" (SAN) the soft-argmax coordinates."""
  if models.KINDS.get(config.model.name) != "integral_2d":
    return step_lib.make_predict_step(model, flip_index, **options)
  if options["scales"]:
    raise UserError(f"config key eval.multi_scale: {config.model.name} regresses coordinates "
                    "from one crop; set it to ()")
  input_wh, heatmap_wh = pipeline.input_and_heatmap_wh(config)
  return integral2d_step.make_predict_step(model, input_wh, heatmap_wh, flip_index)


def predict_keypoints(config, model, variables, mesh, source) -> dict[str, np.ndarray]:
  """Runs the model over every person of `source`, on all processes' devices.

  Each process feeds its rows of each global batch; the outputs come back replicated, so
  every process holds every prediction (the gather of a multi-process evaluation).
  Returns arrays over N persons: `keypoints` [N, K, 3] (x, y, score in image pixels),
  `center_xy`, `scale_wh` [N, 2], `record_index`, `image_id`, `annotation_id` [N] (-1 for
  detected boxes).
  """
  _, heatmap_wh = pipeline.input_and_heatmap_wh(config)
  flip_index = source.spec.flip_index if config.eval.flip_test else None
  options = predict_options(config)
  predict_step = make_predict_step(config, model, flip_index, options)

  def predict_and_gather(variables, batch):
    xy, scores = predict_step(variables, batch["image"])
    return (xy, scores, batch["center_xy"], batch["scale_wh"], batch["record_index"],
            batch["skipped"])

  predict_and_gather = jax.jit(
      predict_and_gather,
      in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh))
  num_keypoints = source.spec.num_keypoints
  # Empty first entries, so that a source without boxes gives empty predictions.
  collected = defaultdict(list, keypoints=[np.zeros((0, num_keypoints, 3))],
                          center_xy=[np.zeros((0, 2), np.float32)],
                          scale_wh=[np.zeros((0, 2), np.float32)],
                          record_index=[np.zeros(0, np.int32)])
  for local_batch in pipeline.eval_dataset(config, source, config.eval.batch_size,
                                           options["scales"]):
    batch = mesh_lib.put_batch(local_batch, mesh)
    xy, scores, center_xy, scale_wh, record_index, skipped = jax.device_get(
        predict_and_gather(variables, batch))
    real = record_index >= 0  # padding rows that complete the last global batch
    real &= skipped == 0  # a person whose image could not be used gets no prediction
    image_xy = heatmap_codec.heatmap_to_image_xy(xy[real], center_xy[real], scale_wh[real],
                                                 heatmap_wh)
    collected["keypoints"].append(np.concatenate([image_xy, scores[real][..., None]], axis=-1))
    collected["center_xy"].append(center_xy[real])
    collected["scale_wh"].append(scale_wh[real])
    collected["record_index"].append(record_index[real])
  predictions = {k: np.concatenate(v) for k, v in collected.items()}
  records = [source.records[i] for i in predictions["record_index"]]
  predictions["image_id"] = np.array([_field(r, "image_id") for r in records], np.int64)
  predictions["annotation_id"] = np.array([_field(r, "annotation_id") for r in records], np.int64)
  return predictions


def _field(record, name: str):
  """A record's field: COCO sources hold dataclasses, MPII and LSP sources dicts."""
  return record[name] if isinstance(record, dict) else getattr(record, name)


def keypoints_in_record_order(predictions: dict[str, np.ndarray], num_records: int) -> np.ndarray:
  """[num_records, K, 3] predictions by record position, NaN for records without one (an
  unreadable image): the benchmarks (MPII, LSP) score persons by position and count NaN as
  a miss."""
  ordered = np.full((num_records, *predictions["keypoints"].shape[1:]), np.nan)
  ordered[predictions["record_index"]] = predictions["keypoints"]
  return ordered


def score_by_position(config, ground_truth, predictions) -> dict[str, float]:
  """PCKh (MPII: `mpii_eval`, against the split's gt_valid.mat) or PCK@0.2 (LSP: `lsp_eval`)
  of person-ordered predictions, as fractions: "PCKh@0.5" (the benchmark's Mean), "PCKh@0.1",
  and per joint group "PCKh@0.5_<group>", "PCKh@0.1_<group>" (LSP: "PCK@0.2", "PCK@0.2_<group>")."""
  ordered = keypoints_in_record_order(predictions, len(ground_truth))
  if ground_truth.spec.dataset == "lsp":
    table = lsp_eval.evaluate_lsp_joints(Path(ground_truth.annotation_file), ordered)
    return {("PCK@0.2" if name == "Mean" else f"PCK@0.2_{name}"): value / 100.0
            for name, value in table.items()}
  gt_valid = ground_truth.annotation_file.parent / "gt_valid.mat"
  if not gt_valid.is_file():
    raise UserError(f"config key data.val_split: {gt_valid} not found; MPII is scored against "
                    "HRNet's annot/gt_valid.mat (the valid split)")
  table = mpii_eval.evaluate_gt_valid(gt_valid, ordered)
  metrics = {}
  for name, value in table.items():
    group, _, threshold = name.partition("@")
    key = f"PCKh@{threshold or '0.5'}"
    metrics[key if group == "Mean" else f"{key}_{group}"] = value / 100.0
  return metrics


def _save_visualization(path: Path, ground_truth, results: list[dict], num_images: int) -> None:
  """Ground truth and the scored predictions (after rescoring and NMS) of the first images."""
  image_paths = {r.image_id: (r.image_path, r.image_wh) for r in ground_truth.records}
  image_ids = sorted(image_paths)[:num_images]
  num_keypoints = ground_truth.spec.num_keypoints
  images, predicted, labelled = [], [], []
  for image_id in image_ids:
    image, problem = image_io.read_image(*image_paths[image_id])
    if problem:  # already warned about while predicting; left out of the picture
      continue
    images.append(image)
    predicted.append(np.reshape(
        [r["keypoints"] for r in results if r["image_id"] == image_id], (-1, num_keypoints, 3)))
    labelled.append(np.stack([r.keypoints for r in ground_truth.records if r.image_id == image_id]))
  if images:
    visualize.save_prediction_grid(path, images, predicted, labelled, ground_truth.spec.skeleton)


def evaluate(config, model, variables, mesh, workdir: Path, step: int) -> dict[str, float]:
  """Scores the model on the val split; writes the results json and a PNG into `workdir`.

  Every process takes part in the predictions; process 0 alone scores and writes them, and
  the other processes return {}.
  """
  ground_truth = pipeline.open_split(config, config.data.val_split)
  by_position = ground_truth.spec.dataset in _SCORED_BY_POSITION
  if by_position and config.eval.person_boxes != "gt":
    raise UserError(f"config key eval.person_boxes: {ground_truth.spec.dataset} is scored on "
                    "its annotated persons; set it to 'gt'")
  source = open_person_boxes(config, ground_truth)
  predictions = predict_keypoints(config, model, variables, mesh, source)
  if jax.process_index() != 0:
    return {}
  if by_position:
    metrics = score_by_position(config, ground_truth, predictions)
    # Person-ordered predictions (0-based image pixels, score; NaN: no prediction).
    ordered = keypoints_in_record_order(predictions, len(ground_truth))
    (workdir / f"results_val_step{step}.json").write_text(json.dumps(
        {"keypoints_xy_score": np.where(np.isnan(ordered), None, ordered).tolist()}))
    metrics.update(skipped_samples=float(len(source) - len(predictions["image_id"])),
                   dataset_skipped_persons=float(ground_truth.scan.skipped_persons),
                   dataset_filtered_persons=float(ground_truth.scan.filtered_persons))
    return metrics
  results = coco_eval.rescore_and_nms(
      image_ids=predictions["image_id"], keypoints=predictions["keypoints"],
      box_scores=box_scores(source, predictions["record_index"]),
      areas=np.prod(predictions["scale_wh"], axis=1), oks_sigmas=source.spec.oks_sigmas,
      in_vis_threshold=config.eval.keypoint_score_threshold,
      oks_threshold=config.eval.oks_nms_threshold)
  metrics = coco_eval.evaluate_keypoints(
      ground_truth.annotation_file, results, workdir / f"results_val_step{step}.json")
  # Boxes without a prediction because their image failed, and persons left out at open.
  metrics.update(skipped_samples=float(len(source) - len(predictions["image_id"])),
                 dataset_skipped_persons=float(ground_truth.scan.skipped_persons),
                 dataset_filtered_persons=float(ground_truth.scan.filtered_persons))
  if config.eval.num_visualize > 0:
    _save_visualization(workdir / f"predictions_val_step{step}.png", ground_truth, results,
                        config.eval.num_visualize)
  return metrics
