"""DEKR's pose rescoring net: an MLP that predicts a pose's OKS from its shape; the score of
each bottom-up pose is multiplied by it (DEKR Sec. 3.4 "pose rescoring", RESCORE.VALID).

As the official code (HRNet/DEKR @7a30313, `lib/utils/rescore.py`, `lib/models/predictOKS.py`,
`tools/train_scorenet.py`, `experiments/*/rescore_*.yaml`):

  features   per pose [K, 3] (x, y, joint score) in image pixels: for each of the dataset's L
             limbs (a, b), the vector p_a - p_b and its length, both divided by the torso
             length (mean length of limbs 9 and 11, floored at 1), then the K joint scores:
             2L + L + K values (COCO 74, CrowdPose 59)
  net        Linear(F, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, 1), kaiming-uniform
             (a = 1) weights, zero biases
  training   rows: every detection of a results json on the *train* split with its best OKS
             against the ground truth, read by COCOeval's matching (`training_rows`); MSE,
             Adam lr 1e-3, 20 epochs, batch 1024, reshuffled every epoch, the last partial
             batch dropped
  use        score <- net(features) x score, a NaN prediction counting as 0

Two quirks of the official data are kept so that its nets and ours learn from the same rows:
COCOeval runs `evaluateImg` once per area range (all, medium, large), so every detection is a
row three times (with the matching of that range's ignore flags); and an OKS of exactly 1
becomes 0 (`get_joint`). Detections on images without ground truth give no row (COCOeval
computes no OKS there).

The weights are stored as the official state dict: a `.pth` (the released
`final_rescore_coco_kpt.pth`, read without torch) or our own `.npz` with the same keys
(`l1.weight` [256, F], ...). `python -m jaxpose.tools.rescore` fits one.
"""

from pathlib import Path
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from pycocotools.cocoeval import COCOeval

from jaxpose import torch_checkpoint
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import UserError
from jaxpose.evaluation import coco_eval
from jaxpose.evaluation import crowdpose_eval

# The official JOINT_{COCO,CROWDPOSE}_LINK_1 / _2 pairs, in its order (the features' order).
LIMBS = {
    "coco": ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (5, 11),
             (6, 8), (6, 12), (7, 9), (8, 10), (11, 12), (11, 13), (12, 14), (13, 15), (14, 16)),
    "crowdpose": ((12, 13), (13, 0), (13, 1), (0, 2), (1, 3), (2, 4), (3, 5), (0, 6), (1, 7),
                  (6, 8), (7, 9), (8, 10), (9, 11), (6, 7), (0, 1)),
}
# The limbs whose mean length normalises the rest (official: indices 9 and 11 for both sets;
# for COCO the two shoulder-hip sides, for CrowdPose the left thigh and shin).
TORSO_LIMBS = (9, 11)
HIDDEN = 256  # RESCORE.HIDDEN_LAYER


def pose_features(keypoints: np.ndarray, dataset: str) -> np.ndarray:
  """[N, K, 3] poses (x, y, joint score) -> [N, 3L + K] float32 features (module docstring)."""
  keypoints = np.asarray(keypoints, np.float64)
  first, second = (np.array(side) for side in zip(*LIMBS[dataset]))
  limbs = keypoints[:, first, :2] - keypoints[:, second, :2]  # [N, L, 2]
  lengths = np.sqrt(limbs[..., 0] ** 2 + limbs[..., 1] ** 2)
  torso = np.maximum((lengths[:, TORSO_LIMBS[0]] + lengths[:, TORSO_LIMBS[1]]) / 2, 1.0)
  return np.concatenate([(limbs / torso[:, None, None]).reshape(len(keypoints), -1),
                         lengths / torso[:, None], keypoints[:, :, 2]], axis=1).astype(np.float32)


class RescoreNet(nn.Module):
  """PredictOKSNet: features [N, F] -> predicted OKS [N, 1]; layer names as the torch keys."""
  hidden: int = HIDDEN

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform, a=1
    x = nn.relu(nn.Dense(self.hidden, kernel_init=init, name="l1")(features))
    x = nn.relu(nn.Dense(self.hidden, kernel_init=init, name="l2")(x))
    return nn.Dense(1, kernel_init=init, name="l3")(x)


def params_from_state_dict(state: dict[str, np.ndarray]) -> dict:
  """The official state dict (torch Linear: weight [out, in]) -> RescoreNet params."""
  return {layer: {"kernel": jnp.asarray(state[f"{layer}.weight"]).T,
                  "bias": jnp.asarray(state[f"{layer}.bias"])} for layer in ("l1", "l2", "l3")}


def state_dict_from_params(params: dict) -> dict[str, np.ndarray]:
  return {f"{layer}.{name}": np.asarray(value.T if name == "weight" else value)
          for layer in ("l1", "l2", "l3")
          for name, value in (("weight", params[layer]["kernel"]), ("bias", params[layer]["bias"]))}


def save(path: str | Path, params: dict) -> None:
  """Writes the net as an `.npz` with the official state dict's keys."""
  np.savez(path, **state_dict_from_params(params))


def load(path: str | Path, dataset: str) -> dict:
  """RescoreNet params from an official `.pth` or our `.npz`; UserError naming the file if it
  is missing, unreadable or not a rescoring net for `dataset`'s features."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise UserError(f"{path}: no such file (a rescoring net: DEKR's .pth or "
                    "`python -m jaxpose.tools.rescore`'s .npz)")
  if path.suffix == ".npz":
    with np.load(path) as stored:
      state = dict(stored)
  else:
    state = torch_checkpoint.state_dict(path)
  num_features = 3 * len(LIMBS[dataset]) + keypoints_lib.get_spec(dataset).num_keypoints
  expected = [f"{layer}.{name}" for layer in ("l1", "l2", "l3") for name in ("weight", "bias")]
  if sorted(state) != sorted(expected):
    raise UserError(f"{path}: holds {sorted(state)[:8]}, not a rescoring net ({expected})")
  if state["l1.weight"].shape[1] != num_features:
    raise UserError(f"{path}: l1.weight is {state['l1.weight'].shape}; {dataset} poses give "
                    f"{num_features} features")
  return params_from_state_dict(state)


@jax.jit
def predict_oks(params: dict, features: jax.Array) -> jax.Array:
  return RescoreNet(params["l1"]["kernel"].shape[1]).apply({"params": params}, features)[:, 0]


def rescore(params: dict, keypoints: np.ndarray, scores: np.ndarray, dataset: str) -> np.ndarray:
  """Pose scores [N] times the predicted OKS of each pose (keypoints [N, K, 3], image pixels);
  a NaN prediction counts as 0, as `rescore_valid`."""
  if len(keypoints) == 0:
    return np.asarray(scores, np.float32)
  predicted = np.asarray(predict_oks(params, pose_features(keypoints, dataset)))
  return np.where(np.isnan(predicted), 0.0, predicted) * np.asarray(scores, np.float32)


def rescore_poses(params: dict, poses_by_record: dict, dataset: str) -> dict:
  """`rescore` over {record: (keypoints [N, K, 3], scores [N])}, in one call of the net."""
  records = sorted(poses_by_record)
  if not records:
    return {}
  counts = [len(poses_by_record[record][1]) for record in records]
  scores = rescore(params, np.concatenate([poses_by_record[r][0] for r in records]),
                   np.concatenate([poses_by_record[r][1] for r in records]), dataset)
  return {record: (poses_by_record[record][0], part)
          for record, part in zip(records, np.split(scores, np.cumsum(counts)[:-1]))}


class _Recorder:
  """Mixin for a keypoint COCOeval: `evaluateImg` records (pose, best OKS) per detection."""

  def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802, N803 (pycocotools' names)
    ground_truth, detections = self._gts[imgId, catId], self._dts[imgId, catId]
    oks = self.ious[imgId, catId]
    if len(oks) == 0:  # no ground truth or no detection here: COCOeval computed no OKS
      return None
    # The rows of `oks` follow the detections by score (stable), as computeOks ordered them.
    order = np.argsort([-d["score"] for d in detections], kind="mergesort")[:maxDet]
    ignored = np.array([bool(g["ignore"]) or not aRng[0] <= g["area"] <= aRng[1]
                        for g in ground_truth])
    # COCOeval's matching walks the persons regular-first and stops at the first ignored one
    # once it holds a regular match: the best OKS over regular persons, or over all if none is.
    counted = ~ignored if (~ignored).any() else np.ones_like(ignored)
    for row, index in enumerate(order):
      pose = np.asarray(detections[index]["keypoints"], np.float64).reshape(-1, 3)
      self.recorded.append((pose, float(np.max(oks[row][counted]))))
    return None


class _CocoRecorder(_Recorder, COCOeval):
  pass


class _CrowdPoseRecorder(_Recorder, crowdpose_eval.CrowdPoseCOCOeval):
  pass


def training_rows(annotation_file: str | Path, results_json: str | Path, dataset: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(poses [R, K, 3], OKS [R]) of the detections in `results_json` against the ground truth,
  as DEKR's Coco/CrowdRescoreEval dump them (module docstring: 3 rows per detection)."""
  if dataset == "crowdpose":
    ground_truth = crowdpose_eval.load_ground_truth(annotation_file)
    recorder_class = _CrowdPoseRecorder
  else:
    ground_truth = coco_eval.load_ground_truth(annotation_file)
    recorder_class = lambda gt, dt: _CocoRecorder(gt, dt, "keypoints")  # noqa: E731
  results = coco_eval.load_results(results_json, ground_truth, annotation_file)
  recorder = recorder_class(ground_truth, coco_eval.detections_from(ground_truth, results))
  recorder.recorded = []
  with coco_eval.quiet():
    recorder.evaluate()
  if not recorder.recorded:
    raise UserError(f"{results_json}: no detection on an image with ground truth in "
                    f"{annotation_file}; nothing to train the rescoring net on")
  poses = np.stack([pose for pose, _ in recorder.recorded])
  oks = np.array([value for _, value in recorder.recorded])
  return poses, np.where(oks == 1, 0.0, oks)  # the official get_joint's quirk


def fit(features: np.ndarray, oks: np.ndarray, *, hidden: int = HIDDEN,
        learning_rate: float = 1e-3, epochs: int = 20, batch_size: int = 1024, seed: int = 0,
        params: dict | None = None, epoch_orders: Iterable[np.ndarray] | None = None
        ) -> tuple[dict, list[float]]:
  """Trains RescoreNet as `rescore_fit` (MSE, Adam); returns (params, mean loss per epoch).

  params: start from these (default: a fresh init from `seed`); epoch_orders: the row order
  of each epoch (default: a permutation per epoch from `seed`). Rows past the last full batch
  of an epoch are not used, as there; fewer rows than `batch_size` is an error.
  """
  features = jnp.asarray(features, jnp.float32)
  targets = jnp.asarray(oks, jnp.float32)
  if len(features) < batch_size:
    raise UserError(f"{len(features)} training rows, fewer than one batch of {batch_size}")
  net = RescoreNet(hidden)
  if params is None:
    params = net.init(jax.random.key(seed), features[:1])["params"]
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_batch(params, opt_state, rows):
    def mse(params):
      return jnp.mean((net.apply({"params": params}, features[rows])[:, 0] - targets[rows]) ** 2)
    loss, grads = jax.value_and_grad(mse)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if epoch_orders is None:
    shuffler = np.random.default_rng(seed)
    epoch_orders = (shuffler.permutation(len(features)) for _ in range(epochs))
  losses = []
  for order in epoch_orders:
    batch_losses = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
      params, opt_state, loss = train_batch(params, opt_state,
                                            jnp.asarray(order[start:start + batch_size]))
      batch_losses.append(loss)
    losses.append(float(np.mean(jax.device_get(batch_losses))))
  return params, losses
