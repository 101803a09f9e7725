"""Human3.6M evaluation of an integral (SAN 3D) model: MPJPE and PA-MPJPE in millimetres.

Every test frame is centre-cropped around its box, predicted (flip test with `eval.flip_test`)
and decoded to root-relative camera space as integral-human-pose / RLE evaluate:
`integral_camera.decode_to_camera` with the ground-truth root depth (the protocol gives it;
the network predicts depth relative to the root). Scored by `h36m_eval.h36m_errors` against
the root-relative ground truth. Reported: `mpjpe_mm` (protocol 1's number) and `pa_mpjpe_mm`
(protocol 2's), both the mean over actions of per-action means (the papers' Avg column),
their `*_all_frames_mm` means over frames, and `mpjpe_mm/<Action>` per action. Both metrics
are always reported; `data.protocol` decides the subjects, the paper's table decides which
number is read.
"""

import json
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from jaxpose import integral_step
from jaxpose import mesh as mesh_lib
from jaxpose.codecs import integral_camera
from jaxpose.data import h36m
from jaxpose.data import integral_pipeline
from jaxpose.evaluation import h36m_eval


def predict_camera_poses(config, model, variables, mesh, source) -> dict[str, np.ndarray]:
  """Runs the model over every frame of `source` on all processes' devices (outputs come back
  replicated). Returns `record_index` [N] and `predicted_mm` [N, K, 3] root-relative camera
  space, for the frames whose image could be read."""
  wh = integral_pipeline.input_wh(config)
  flip_index = source.spec.flip_index if config.eval.flip_test else None
  predict_step = integral_step.make_predict_step(model, wh, flip_index)

  def predict_and_gather(variables, batch):
    return (predict_step(variables, batch["image"]), batch["center_xy"], batch["scale_wh"],
            batch["record_index"], batch["skipped"])

  predict_and_gather = jax.jit(
      predict_and_gather,
      in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
      out_shardings=mesh_lib.replicated(mesh))
  collected = defaultdict(list)
  for local_batch in integral_pipeline.eval_dataset(config, source, config.eval.batch_size):
    batch = mesh_lib.put_batch(local_batch, mesh)
    coords, center_xy, scale_wh, record_index, skipped = jax.device_get(
        predict_and_gather(variables, batch))
    real = (record_index >= 0) & (skipped == 0)
    if not real.any():
      continue
    records = [source.records[i] for i in record_index[real]]
    root_depth = np.array([r["joints_cam_mm"][r["root_index"], 2] for r in records])
    collected["predicted_mm"].append(integral_camera.decode_to_camera(
        coords[real], center_xy[real], scale_wh[real], wh,
        np.stack([r["focal_xy"] for r in records]), np.stack([r["principal_xy"] for r in records]),
        root_depth, root_index=int(source.spec.root_index)))
    collected["record_index"].append(record_index[real])
  num_keypoints = source.spec.num_keypoints
  return dict(
      record_index=np.concatenate(collected["record_index"] or [np.zeros(0, np.int64)]),
      predicted_mm=np.concatenate(collected["predicted_mm"]
                                  or [np.zeros((0, num_keypoints, 3))]))


def score(source: h36m.Human36MFrames, record_index: np.ndarray,
          predicted_mm: np.ndarray) -> dict[str, float]:
  """MPJPE / PA-MPJPE (mm) of root-relative predictions of the given frames of `source`."""
  records = [source.records[i] for i in record_index]
  ground_truth = np.stack([r["joints_cam_mm"] - r["joints_cam_mm"][r["root_index"]]
                           for r in records]).astype(np.float64)
  actions = [h36m.ACTIONS[int(r["action"]) - 2] for r in records]
  errors = h36m_eval.h36m_errors(predicted_mm, ground_truth, actions)
  metrics = dict(mpjpe_mm=errors["MPJPE"], pa_mpjpe_mm=errors["PA-MPJPE"],
                 mpjpe_all_frames_mm=errors["MPJPE_all_frames"],
                 pa_mpjpe_all_frames_mm=errors["PA-MPJPE_all_frames"])
  metrics.update({f"mpjpe_mm/{k.split('/', 1)[1]}": v for k, v in errors.items()
                  if k.startswith("MPJPE/")})
  return metrics


def evaluate(config, model, variables, mesh, workdir: Path, step: int) -> dict[str, float]:
  """Scores the model on `data.val_split`; process 0 writes `results_val_step{step}.json`
  (the metrics) and returns them, other processes return {}."""
  source = integral_pipeline.open_split(config, config.data.val_split)
  predictions = predict_camera_poses(config, model, variables, mesh, source)
  if jax.process_index() != 0:
    return {}
  metrics = score(source, predictions["record_index"], predictions["predicted_mm"])
  metrics["skipped_samples"] = float(len(source) - len(predictions["record_index"]))
  Path(workdir, f"results_val_step{step}.json").write_text(json.dumps(metrics, indent=1))
  return metrics
