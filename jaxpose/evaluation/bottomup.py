"""Bottom-up (DEKR / SAMKR) evaluation on the val split: COCO or CrowdPose metrics.

As DEKR's `tools/valid.py` at one scale (HRNet/DEKR @7a30313): every val image, also those
without annotations, is resized keeping its aspect ratio (`bottomup_pipeline.eval_dataset`,
padded to one canvas), run through the jitted predict step (flip test, centre peaks, poses
from the offsets, heatmap rescoring, pose NMS: `bottomup_step.make_bottomup_predict_step`),
mapped back to image pixels on the host, its score multiplied by the rescoring net's predicted
OKS if `eval.rescore_model` names one (DEKR's RESCORE.VALID, `jaxpose.evaluation.rescore`),
and every kept pose is written with its score to a results json (DEKR applies no OKS-NMS
here), scored with pycocotools (`coco_eval`) or crowdpose-api's rules (`crowdpose_eval`) by
`data.keypoints`.

Config keys read: `eval.{batch_size, flip_test, input_size, canvas_size, max_people,
center_threshold, nms_distance, nms_min_joints, num_visualize, rescore_model}`, `data.*`,
`input.*` as the pipeline.
"""

from pathlib import Path

import jax
import numpy as np

from jaxpose import bottomup_step
from jaxpose import mesh as mesh_lib
from jaxpose import visualize
from jaxpose.codecs import bottomup_decode
from jaxpose.data import bottomup_pipeline
from jaxpose.data import image_io
from jaxpose.evaluation import coco_eval
from jaxpose.evaluation import crowdpose_eval
from jaxpose.evaluation import rescore

_GATHERED = ("center_xy", "scale_wh", "input_wh", "record_index", "skipped", "shrunk")


def predict_options(config) -> dict:
  """`make_bottomup_predict_step`'s options from the `eval` block."""
  return dict(max_people=int(config.eval.max_people),
              center_threshold=float(config.eval.center_threshold),
              nms_distance=float(config.eval.nms_distance),
              nms_min_joints=int(config.eval.nms_min_joints),
              stride=bottomup_pipeline.HEATMAP_STRIDE)


def predict_poses(config, model, variables, mesh, source) -> dict:
  """Runs the model over every image of `source`, on all processes' devices.

  Each process feeds its rows of each global batch; the outputs come back replicated, so
  every process holds every prediction. Returns {"poses": {record index: (keypoints
  [N, K, 3] in image pixels, scores [N])} for each image that was read, "skipped": images
  that could not be read, "shrunk": images resized below `eval.input_size` to fit the canvas}.
  """
  flip_index = source.spec.flip_index if config.eval.flip_test else None
  predict_step = bottomup_step.make_bottomup_predict_step(model, flip_index,
                                                           **predict_options(config))

  def predict_and_gather(variables, batch):
    poses = predict_step(variables, batch["image"], batch["input_wh"])
    return poses, {key: batch[key] for key in _GATHERED}

  predict_and_gather = jax.jit(
      predict_and_gather,
      in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh))
  poses_by_record, skipped, shrunk = {}, 0, 0
  for local_batch in bottomup_pipeline.eval_dataset(config, source, config.eval.batch_size):
    batch = mesh_lib.put_batch(local_batch, mesh)
    poses, extra = jax.device_get(predict_and_gather(variables, batch))
    for row, record_index in enumerate(extra["record_index"]):
      if record_index < 0:  # padding that completes the last global batch
        continue
      if extra["skipped"][row]:  # unreadable image: no prediction, counted
        skipped += 1
        continue
      shrunk += int(extra["shrunk"][row])
      kept = poses["valid"][row]
      keypoints = bottomup_decode.to_image_coordinates(
          poses["keypoints"][row][kept], extra["center_xy"][row], extra["scale_wh"][row],
          tuple(int(v) for v in extra["input_wh"][row]))
      poses_by_record[int(record_index)] = (keypoints, poses["scores"][row][kept])
  return {"poses": poses_by_record, "skipped": skipped, "shrunk": shrunk}


def results_json_entries(source, poses_by_record: dict) -> list[dict]:
  """COCO / CrowdPose results: one entry per kept pose, in record order."""
  results = []
  for record_index in sorted(poses_by_record):
    keypoints, scores = poses_by_record[record_index]
    results += bottomup_decode.coco_results(source.records[record_index].image_id, keypoints,
                                            scores)
  return results


def _save_visualization(path: Path, source, poses_by_record: dict, num_images: int) -> None:
  """Ground truth and predictions of the first images that were predicted."""
  images, predicted, labelled = [], [], []
  for record_index in sorted(poses_by_record)[:num_images]:
    record = source.records[record_index]
    image, problem = image_io.read_image(record.image_path, record.image_wh)
    if problem:
      continue
    images.append(image)
    predicted.append(poses_by_record[record_index][0])
    labelled.append(record.keypoints)
  if images:
    visualize.save_prediction_grid(path, images, predicted, labelled, source.spec.skeleton)


def evaluate(config, model, variables, mesh, workdir: Path, step: int) -> dict[str, float]:
  """Scores the model on `data.val_split`; writes the results json (and a PNG) into `workdir`.

  Every process takes part in the predictions; process 0 alone scores and writes them, and
  the other processes return {}. Metrics: COCO's AP ... ARl (or CrowdPose's AP ... AP_hard),
  plus `skipped_samples` (unreadable images), `eval_images_shrunk`, and the persons the
  reader left out (`dataset_skipped_persons`, `dataset_filtered_persons`).
  """
  source = bottomup_pipeline.open_split(config, config.data.val_split, for_eval=True)
  predicted = predict_poses(config, model, variables, mesh, source)
  if jax.process_index() != 0:
    return {}
  if config.eval.rescore_model:
    net = rescore.load(config.eval.rescore_model, source.spec.dataset)
    predicted["poses"] = rescore.rescore_poses(net, predicted["poses"], source.spec.dataset)
  results = results_json_entries(source, predicted["poses"])
  scorer = crowdpose_eval if source.spec.dataset == "crowdpose" else coco_eval
  metrics = scorer.evaluate_keypoints(source.annotation_file, results,
                                      Path(workdir) / f"results_val_step{step}.json")
  metrics.update(skipped_samples=float(predicted["skipped"]),
                 eval_images_shrunk=float(predicted["shrunk"]),
                 dataset_skipped_persons=float(source.scan.skipped_persons),
                 dataset_filtered_persons=float(source.scan.filtered_persons))
  if config.eval.num_visualize > 0:
    _save_visualization(Path(workdir) / f"predictions_val_step{step}.png", source,
                        predicted["poses"], config.eval.num_visualize)
  return metrics
