"""Top-down evaluation on the val split with ground-truth person boxes.

Crops every labelled person, runs the jitted predict step (flip test, argmax + quarter-pixel
refinement), maps keypoints back to image pixels, rescores and OKS-NMSes per image as
HRNet's `COCODataset.evaluate`, writes the COCO results json and scores it with pycocotools.
"""

from collections import defaultdict
from pathlib import Path

import cv2
import jax
import numpy as np

from jaxpose import mesh as mesh_lib
from jaxpose import step as step_lib
from jaxpose import visualize
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.data import pipeline
from jaxpose.evaluation import coco_eval


def predict_keypoints(config, model, variables, mesh, source) -> dict[str, np.ndarray]:
  """Runs the model over every person of `source`.

  Returns arrays over N persons: `keypoints` [N, K, 3] (x, y, score in image pixels),
  `center_xy`, `scale_wh` [N, 2], `image_id`, `annotation_id` [N].
  """
  _, heatmap_wh = pipeline.input_and_heatmap_wh(config)
  flip_index = source.spec.flip_index if config.eval.flip_test else None
  predict_step = jax.jit(
      step_lib.make_predict_step(model, flip_index),
      in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh))
  batch_size = config.eval.batch_size
  collected = defaultdict(list)
  for batch in pipeline.eval_dataset(config, source, batch_size):
    count = len(batch["image_id"])
    # Pad the last batch to the compiled size by repeating its last row; padded rows are dropped.
    images = np.concatenate([batch["image"], np.repeat(batch["image"][-1:], batch_size - count, 0)])
    images = mesh_lib.put_batch({"image": images}, mesh)["image"]
    xy, scores = jax.device_get(predict_step(variables, images))
    image_xy = heatmap_codec.heatmap_to_image_xy(
        xy[:count], batch["center_xy"], batch["scale_wh"], heatmap_wh)
    collected["keypoints"].append(np.concatenate([image_xy, scores[:count, :, None]], axis=-1))
    for key in ("center_xy", "scale_wh", "image_id", "annotation_id"):
      collected[key].append(batch[key])
  return {k: np.concatenate(v) for k, v in collected.items()}


def _save_visualization(path: Path, source, predictions, num_images: int) -> None:
  image_paths = {r.image_id: r.image_path for r in source.records}
  image_ids = sorted(image_paths)[:num_images]
  images, predicted, ground_truth = [], [], []
  for image_id in image_ids:
    image = cv2.cvtColor(cv2.imread(image_paths[image_id]), cv2.COLOR_BGR2RGB)
    images.append(image)
    predicted.append(predictions["keypoints"][predictions["image_id"] == image_id])
    ground_truth.append(np.stack([r.keypoints for r in source.records if r.image_id == image_id]))
  visualize.save_prediction_grid(path, images, predicted, ground_truth, source.spec.skeleton)


def evaluate(config, model, variables, mesh, workdir: Path, step: int) -> dict[str, float]:
  """Scores the model on the val split; writes the results json and a PNG into `workdir`."""
  source = pipeline.open_split(config, config.data.val_split)
  predictions = predict_keypoints(config, model, variables, mesh, source)
  results = coco_eval.rescore_and_nms(
      image_ids=predictions["image_id"], keypoints=predictions["keypoints"],
      box_scores=np.ones(len(predictions["image_id"])),  # ground-truth boxes
      areas=np.prod(predictions["scale_wh"], axis=1), oks_sigmas=source.spec.oks_sigmas,
      in_vis_threshold=config.eval.keypoint_score_threshold,
      oks_threshold=config.eval.oks_nms_threshold)
  metrics = coco_eval.evaluate_keypoints(
      source.annotation_file, results, workdir / f"results_val_step{step}.json")
  if config.eval.num_visualize > 0 and jax.process_index() == 0:
    _save_visualization(workdir / f"predictions_val_step{step}.png", source, predictions,
                        config.eval.num_visualize)
  return metrics
