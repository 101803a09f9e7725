"""`jaxpose.bench`'s figures: the MFU arithmetic, the peak table, and a compile-only step
whose XLA memory figures are checked against an independent count of the train state."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from jaxpose import bench
from jaxpose import macs
from jaxpose import trace_ops
from jaxpose.models import fast_grad
from jaxpose.models import sadinet


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
  flops = bench.Flops(model=3e12, xla=3.5e12)
  figures = bench._figures("step", config, 8, 1.0, 1.5, flops, None, peak=4.0)  # pylint: disable=protected-access
  assert figures["tflops_per_second"] == pytest.approx(2.0)
  assert figures["mfu"] == pytest.approx(0.5)
  assert figures["images_per_second"] == pytest.approx(8 / 1.5, abs=0.01)
  # On CPU no MFU unless a peak is given; a compile-only run has no step time.
  assert figures["model_gflops_per_step"] == 3000 and figures["gflops_per_step"] == 3500
  assert "mfu" not in bench._figures("step", config, 8, 1.0, 1.5, flops, None)  # pylint: disable=protected-access
  compile_only = bench._figures("step", config, 8, 1.0, None, flops, None, peak=4.0)  # pylint: disable=protected-access
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


def test_op_times_sum_each_instructions_spans_per_step():
  hlo = ("HloModule jit_step\n\nENTRY %main.1 (p0: f32[4]) -> f32[4] {\n"
         "  %p0 = f32[4]{0} parameter(0)\n"
         "  %copy_bitcast_fusion.54 = f32[4]{0} fusion(%p0), kind=kLoop\n"
         "  %ynn_fusion.3 = f32[4]{0} fusion(%copy_bitcast_fusion.54), kind=kCustom\n"
         "  ROOT %copy_bitcast_fusion.7 = f32[4]{0} fusion(%ynn_fusion.3), kind=kLoop\n}\n")
  names = trace_ops.hlo_instruction_names(hlo)
  assert names == {"p0", "copy_bitcast_fusion.54", "ynn_fusion.3", "copy_bitcast_fusion.7"}
  events = [  # durations in microseconds, two traced steps
      dict(ph="X", name="ynn_fusion.3", dur=3000), dict(ph="X", name="ynn_fusion.3", dur=1000),
      dict(ph="X", name="copy_bitcast_fusion.54", dur=500),
      dict(ph="X", name="copy_bitcast_fusion.54", dur=700),
      dict(ph="X", name="copy_bitcast_fusion.7", dur=200),
      dict(ph="X", name="ThunkExecutor::Execute", dur=9000),  # runtime span: not an op
      dict(ph="i", name="ynn_fusion.3", dur=5000)]  # not a complete event
  ops, kinds = trace_ops.op_times(events, names, steps=2)
  assert [op["op"] for op in ops] == ["ynn_fusion.3", "copy_bitcast_fusion.54",
                                      "copy_bitcast_fusion.7"]
  assert ops[0] == dict(op="ynn_fusion.3", kind="ynn_fusion", ms_per_step=2.0, calls_per_step=1.0)
  assert ops[1]["ms_per_step"] == pytest.approx(0.6)
  assert kinds == {"ynn_fusion": 2.0, "copy_bitcast_fusion": pytest.approx(0.7)}


def test_profile_names_ops_of_the_compiled_step(fast_compiles, tmp_path):  # pylint: disable=unused-argument
  config = default_config.get_config("smoke")
  figures = bench.bench_profile(config, batch_size=2, steps=1, profile_dir=str(tmp_path), top=5)
  assert figures["seconds_per_step"] > 0 and len(figures["slowest_ops"]) == 5
  hlo = (tmp_path / "train_step.hlo.txt").read_text()
  for op in figures["slowest_ops"]:
    assert f"%{op['op']} = " in hlo, op
  assert sum(figures["ms_per_step_by_kind"].values()) > 0
  assert figures["trace"].endswith("perfetto_trace.json.gz")


def test_model_flops_count_the_backward_pass_of_fast_grad():
  # Forward conv, weight gradient (patches^T @ dy), input gradient (flipped-kernel conv):
  # each B * H * W * O * 3 * 3 * C multiply-adds, counted by hand.
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))
  loss = lambda k, x: fast_grad.conv2d(x, k, 1, ((1, 1), (1, 1)), 1).sum()
  forward = (2 * 8 * 8 * 5) * (3 * 3 * 4)
  assert macs.jaxpr_macs(jax.make_jaxpr(loss)(kernel, x)) == forward
  assert macs.jaxpr_macs(jax.make_jaxpr(jax.value_and_grad(loss))(kernel, x)) == 3 * forward


def test_model_flops_of_scanned_stacks_equal_the_unrolled_ones():
  # XLA's cost analysis counts a loop body once; the MFU's model FLOPs count every stack.
  images = np.zeros((1, 64, 64, 3), np.float32)
  counts = []
  for scan in (True, False):
    model = sadinet.sadinet_tiny(num_keypoints=4, num_stacks=3, scan_stacks=scan)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               images)
    forward = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, images)
    counts.append(macs.jaxpr_macs(forward))
  assert counts[0] == counts[1] > 0
