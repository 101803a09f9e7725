"""Weighted L1 loss on integral-regression coordinates (SAN Sec. 3.3-3.4).

SAN (Applied Sciences 11(4):1826, 2021) trains with "mean average loss (L1 loss)" on the
coordinates of eq. 5-6; joint 2D/3D learning (Sec. 3.4) supervises x and y for every
sample and z only for 3D samples. Official form: JimmySuen/integral-human-pose @ad3f875
`common_pytorch/loss/integral.py: L1JointLocationLoss` with `size_average=True`, i.e.
`common_loss/weighted_mse.py: weighted_l1_loss`:

  loss = sum_{b, k, c} w[b, k, c] * |pred[b, k, c] - target[b, k, c]| / B

a sum over joints and coordinates divided by the batch size only (not by the number of
labelled joints). A 2D sample has w[b, :, 2] = 0 (`codecs.integral.encode(...,
has_depth=False)`), so d loss / d z[b] = 0 exactly and nothing flows back through its z
expectation; its x and y still train every voxel through the per-joint global softmax, as
in the official code.

Shapes: B batch, K joints; coordinates normalised as `jaxpose.codecs.integral` makes them.
"""

import jax
import jax.numpy as jnp

from jaxpose.codecs import integral


def integral_l1_per_sample(coords: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_{k, c} w |pred - target| per sample: [B, K, C] x 3 -> [B] float32.

  Its batch mean is the official loss (sum over everything / B), and per-sample values let
  the trainer report sums and counts.
  """
  error = jnp.abs(coords.astype(jnp.float32) - targets) * weights
  return error.reshape(error.shape[0], -1).sum(axis=-1)


def integral_l1_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Official `L1JointLocationLoss` from logits: scalar float32.

  logits: [B, H, W, K] (2D) with targets/weights [B, K, 2], or [B, H, W, K * D] (3D,
  joint-major channels) with targets/weights [B, K, 3]; K is read from `targets`.
  """
  num_keypoints, dims = targets.shape[-2:]
  if dims == 3:
    coords = integral.soft_argmax_3d(logits, num_keypoints)
  elif dims == 2:
    coords = integral.soft_argmax_2d(logits)
  else:
    raise ValueError(f"targets must be [B, K, 2] or [B, K, 3], got {targets.shape}")
  return integral_l1_per_sample(coords, targets, weights).mean()
