"""DEKR's pose rescoring net (`jaxpose.evaluation.rescore`) against the official code.

Fixtures from /work/parity/rescore/make_fixture.py, which runs HRNet/DEKR @7a30313's
`lib/utils/rescore.py` and `lib/models/predictOKS.py` unchanged: COCORescoreEval's training
rows for a small seeded ground truth + results json, `get_feature` for COCO and CrowdPose
poses, PredictOKSNet (hidden 16) with its official init saved as a .pth, its outputs, and
three epochs of `train_core` (batch 8) with the recorded shuffles.
"""
import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import samkr_coco
from jaxpose import config_check
from jaxpose.errors import UserError
from jaxpose.evaluation import rescore

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def official():
  with np.load(FIXTURES / "dekr_rescore_official.npz") as data:
    return dict(data)


def _state(official, prefix):
  return {key.removeprefix(prefix): value for key, value in official.items()
          if key.startswith(prefix)}


def test_training_rows_equal_official_dump(official):
  poses, oks = rescore.training_rows(FIXTURES / "dekr_rescore_gt.json",
                                     FIXTURES / "dekr_rescore_results.json", "coco")
  # 3 rows per detection on an image with ground truth (one per COCOeval area range).
  chex.assert_shape(poses, (len(official["oks"]), 17, 3))
  np.testing.assert_allclose(poses, official["poses"], rtol=0, atol=1e-9)
  # get_joint hands the OKS to torch as float32: equal after the same rounding.
  np.testing.assert_array_equal(oks.astype(np.float32), official["oks"])
  assert (oks > 0.9).any() and (oks < 0.01).any()  # close and far detections are both rows


@pytest.mark.parametrize("dataset,poses,expected", [("coco", "poses", "features"),
                                                    ("crowdpose", "crowd_poses", "crowd_features")])
def test_features_equal_official(official, dataset, poses, expected):
  features = rescore.pose_features(official[poses], dataset)
  chex.assert_shape(features, official[expected].shape)
  np.testing.assert_allclose(features, official[expected], rtol=1e-6, atol=1e-6)


def test_pth_import_predicts_as_official(official):
  params = rescore.load(FIXTURES / "dekr_rescore_net.pth", "coco")
  predicted = rescore.predict_oks(params, jnp.asarray(official["features"]))
  np.testing.assert_allclose(predicted, official["predicted"], rtol=1e-5, atol=1e-6)


def test_fit_equals_official_train_core(official):
  start = rescore.params_from_state_dict(_state(official, "initial/"))
  params, losses = rescore.fit(official["features"], official["oks"], hidden=16, batch_size=8,
                               params=start, epoch_orders=official["epoch_orders"])
  np.testing.assert_allclose(losses, official["epoch_losses"], rtol=1e-5)
  trained = rescore.state_dict_from_params(params)
  for key, value in _state(official, "trained/").items():
    np.testing.assert_allclose(trained[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
  assert losses[-1] < losses[0]


def test_fresh_init_is_kaiming_uniform_a1():
  params = rescore.RescoreNet(16).init(jax.random.key(0), jnp.zeros((1, 74)))["params"]
  bound = np.sqrt(3 / 74)  # kaiming_uniform(a=1): gain 1, U(+-sqrt(3 / fan_in))
  kernel = np.asarray(params["l1"]["kernel"])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
  chex.assert_trees_all_equal(params["l2"]["bias"], jnp.zeros(16))


def test_rescore_multiplies_and_zeroes_nan():
  state = {"l1.weight": np.zeros((4, 74), np.float32), "l1.bias": np.zeros(4, np.float32),
           "l2.weight": np.zeros((4, 4), np.float32), "l2.bias": np.zeros(4, np.float32),
           "l3.weight": np.zeros((1, 4), np.float32), "l3.bias": np.array([0.5], np.float32)}
  poses = np.random.default_rng(0).uniform(0, 50, (3, 17, 3))
  scores = np.array([0.2, 0.4, 0.8])
  params = rescore.params_from_state_dict(state)
  np.testing.assert_allclose(rescore.rescore(params, poses, scores, "coco"), scores * 0.5,
                             rtol=1e-6)
  state["l3.bias"] = np.array([np.nan], np.float32)
  np.testing.assert_array_equal(
      rescore.rescore(rescore.params_from_state_dict(state), poses, scores, "coco"), 0.0)
  assert rescore.rescore(params, np.zeros((0, 17, 3)), np.zeros(0), "coco").shape == (0,)


def test_npz_round_trip_and_clear_errors(tmp_path, official):
  params = rescore.params_from_state_dict(_state(official, "initial/"))
  rescore.save(tmp_path / "net.npz", params)
  chex.assert_trees_all_equal(rescore.load(tmp_path / "net.npz", "coco"), params)
  with pytest.raises(UserError, match="missing.npz: no such file"):
    rescore.load(tmp_path / "missing.npz", "coco")
  with pytest.raises(UserError, match="crowdpose poses give 59 features"):
    rescore.load(tmp_path / "net.npz", "crowdpose")
  np.savez(tmp_path / "other.npz", weight=np.zeros(3))
  with pytest.raises(UserError, match="other.npz: holds"):
    rescore.load(tmp_path / "other.npz", "coco")


def test_rescore_poses_keeps_each_image_apart(official):
  params = rescore.load(FIXTURES / "dekr_rescore_net.pth", "coco")
  poses = official["poses"][:7]
  scores = np.linspace(0.1, 0.7, 7)
  by_record = {4: (poses[:3], scores[:3]), 9: (poses[3:3], scores[3:3]), 2: (poses[3:], scores[3:])}
  rescored = rescore.rescore_poses(params, by_record, "coco")
  expected = official["predicted"][:7] * scores
  np.testing.assert_allclose(rescored[4][1], expected[:3], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(rescored[2][1], expected[3:], rtol=1e-5, atol=1e-7)
  assert rescored[9][1].shape == (0,)


def test_exact_match_gives_the_official_zero(tmp_path):
  """get_joint turns an OKS of exactly 1 (a detection equal to its person) into 0."""
  keypoints = [10.0, 20.0, 2] * 17
  gt = dict(images=[dict(id=1, width=100, height=100, file_name="a.jpg")],
            annotations=[dict(id=1, image_id=1, category_id=1, iscrowd=0, area=900.0,
                              bbox=[5, 5, 30, 30], keypoints=keypoints, num_keypoints=17)],
            categories=[dict(id=1, name="person", keypoints=[str(k) for k in range(17)])])
  results = [dict(image_id=1, category_id=1, score=0.9, keypoints=[10.0, 20.0, 0.9] * 17),
             dict(image_id=1, category_id=1, score=0.5, keypoints=[12.0, 20.0, 0.5] * 17)]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "results.json").write_text(json.dumps(results))
  _, oks = rescore.training_rows(tmp_path / "gt.json", tmp_path / "results.json", "coco")
  # per area range (all, medium, large: the 900 px person is small, so ignored in two of
  # them, where it is still the best match there is): the exact copy 0, the shifted one
  # exp(-d^2 / (2 s^2 k^2)) averaged over joints, by hand with COCO's sigmas
  sigmas = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87,
                     .87, .89, .89]) / 10.0
  shifted = np.mean(np.exp(-4.0 / ((2 * sigmas) ** 2 * 2 * (900.0 + np.spacing(1)))))
  np.testing.assert_allclose(oks, [0.0, shifted] * 3, rtol=1e-12)


def test_config_key_names_a_bad_rescore_model(tmp_path):
  config = samkr_coco.get_config("smoke")
  config.eval.rescore_model = str(tmp_path / "nowhere.pth")
  with pytest.raises(UserError, match=r"^config key eval.rescore_model: .*nowhere.pth: no such"):
    config_check.validate(config, device_count=1, process_count=1)
  config.eval.rescore_model = str(FIXTURES / "dekr_rescore_net.pth")
  config_check.validate(config, device_count=1, process_count=1)  # COCO's 74 features: valid
  config.data.keypoints = "crowdpose"
  with pytest.raises(UserError, match="eval.rescore_model: .*crowdpose poses give 59"):
    config_check.validate(config, device_count=1, process_count=1)


def test_cli_fits_and_writes_a_loadable_net(tmp_path):
  command = [sys.executable, "-m", "jaxpose.tools.rescore",
             f"--annotations={FIXTURES / 'dekr_rescore_gt.json'}",
             f"--results={FIXTURES / 'dekr_rescore_results.json'}", "--batch_size=16",
             "--epochs=2", "--hidden=8", f"--out={tmp_path / 'net.npz'}"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "96 training rows" in done.stdout and "epoch 2/2" in done.stdout
  chex.assert_shape(rescore.load(tmp_path / "net.npz", "coco")["l1"]["kernel"], (74, 8))
  done = subprocess.run(command[:-1] + ["--out=net.pth"], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 2 and "--out net.pth: the net is written as .npz" in done.stderr
