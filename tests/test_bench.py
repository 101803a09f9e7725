"""`jaxpose.bench`'s figures: the MFU arithmetic, the peak table, and a compile-only step
whose XLA memory figures are checked against an independent count of the train state."""

import jax
import numpy as np
import pytest

from configs import default as default_config
from jaxpose import bench


@pytest.mark.parametrize("device_kind, tflops", [
    # Vendors' dense bfloat16 figures per JAX device (a TPU v3 chip shows two devices).
    ("TPU v5 lite", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v6 lite", 918.0),
    ("TPU v4", 275.0), ("TPU v3", 61.5), ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("cpu", None),
    ("AMD EPYC", None)])
def test_peak_table_picks_the_longest_matching_name(device_kind, tflops):
  assert bench.peak_tflops(device_kind) == tflops


def test_mfu_is_achieved_over_peak_flops():
  config = default_config.get_config("smoke")
  # 3e12 FLOPs per step in 1.5 s = 2 TFLOP/s; against a 4 TFLOP/s peak, an MFU of 0.5.
  figures = bench._figures("step", config, 8, 1.0, 1.5, 3e12, None, peak=4.0)  # pylint: disable=protected-access
  assert figures["tflops_per_second"] == pytest.approx(2.0)
  assert figures["mfu"] == pytest.approx(0.5)
  assert figures["images_per_second"] == pytest.approx(8 / 1.5, abs=0.01)
  # On CPU no MFU unless a peak is given; a compile-only run has no step time.
  assert "mfu" not in bench._figures("step", config, 8, 1.0, 1.5, 3e12, None)  # pylint: disable=protected-access
  compile_only = bench._figures("step", config, 8, 1.0, None, 3e12, None, peak=4.0)  # pylint: disable=protected-access
  assert "seconds_per_step" not in compile_only and "mfu" not in compile_only


def test_compile_only_step_reports_what_the_state_and_batch_need(fast_compiles):  # pylint: disable=unused-argument
  config = default_config.get_config("smoke")
  figures = bench.bench_step(config, batch_size=2, steps=0, compile_only=True)
  assert "seconds_per_step" not in figures and figures["compile_seconds"] > 0
  assert figures["gflops_per_step"] > 0 and figures["xla_temp_mb"] > 0
  # The step's arguments hold the params and Adam's two moments (float32) and the batch:
  # counted here from the model's own parameter shapes, not from XLA.
  model = bench.train.build_model(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                np.zeros((1, *config.input.size_hw, 3)),
                                                train=False))
  param_mb = sum(np.prod(x.shape) * 4 for x in jax.tree.leaves(variables["params"])) / 2**20
  assert 3 * param_mb <= figures["xla_argument_mb"] < 3 * param_mb + 20, (param_mb, figures)
