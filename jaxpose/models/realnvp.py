"""RealNVP flow and RLE regression head, as in the official RLE code; SADI-Net's DLM uses both.

Li, Bian, Zeng, Wang, Pang, Liu, Lu, "Human Pose Regression with Residual Log-likelihood
Estimation", ICCV 2021, arXiv:2107.11291 (v1), Sec. 3; SADI-Net (Gao et al., IEEE Access
2023) Sec. III-D, eq. 4-5. Ported from Jeff-sjtu/res-loglikelihood-regression @203dc31:

  `rlepose/models/layers/real_nvp.py` RealNVP -> `RealNVP` (`inverse` = `backward_p`,
      `forward` = `forward_p`, `__call__` = `log_prob`)
  `rlepose/models/regression_nf.py` nets, nett -> the s / t coupling MLPs
      (Linear(2, 64) LeakyReLU Linear(64, 64) LeakyReLU Linear(64, 2) [Tanh for s]),
      Linear -> `NormLinear`, RegressFlow's head (fc_coord, fc_sigma, sigmoid, flow,
      bar_mu, log_phi) -> `RegressFlowHead`

The flow has six affine coupling layers with masks [0, 1], [1, 0], ... (the official
`[[0, 1], [1, 0]] * 3`, a buffer `flow.mask` in the state_dict) over a standard normal
prior on R^2. Layer i, with m its mask, maps x -> z (`inverse`, applied for i = 5 .. 0):
z = m x + (1 - m)(x - t(m x)) exp(-s(m x)), log|det dz/dx| = -sum(s), so log G(x) =
log N(z; 0, I) + sum over layers of -sum(s). Points are [..., 2] (x before y).

The coupling MLPs run as pure functions of their weights (`flow_log_prob`) so that a
caller may evaluate the density on many points in rematerialised chunks (`jax.lax.map`
over `jax.checkpoint`): flax parameters cannot be read inside a raw jax transform.

Flax <-> torch keys (`head_from_torch`):

  flax                                  torch
  fc_coord/kernel, bias                 fc_coord.linear.weight (transposed), .bias
  fc_sigma/kernel, bias                 fc_sigma.linear.weight (transposed), .bias
  flow/s{i}/linear{j}/kernel, bias      flow.s.{i}.{j}.weight (transposed), .bias  (j = 0, 2, 4)
  flow/t{i}/linear{j}/kernel, bias      flow.t.{i}.{j}.weight (transposed), .bias
  (constant masks)                      flow.mask, checked to equal the official masks
"""

import math
import re
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose import weights as weights_lib

NUM_COUPLING_LAYERS = 6
HIDDEN = 64
_LEAKY_SLOPE = 0.01  # torch nn.LeakyReLU default
# Points per rematerialised chunk when the density is evaluated on a grid: bounds the
# activations kept for the backward pass (12 hidden layers of 64 floats per point).
CHUNK_POINTS = 16384

# torch nn.Linear's default init, which the official flow keeps (RegressFlow._initialize
# does not reach it): weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Official `Linear`: xavier_uniform_(weight, gain=0.01), i.e. bound 0.01 sqrt(6 / fan_avg / 2).
_xavier_001 = nn.initializers.variance_scaling(1e-4, "fan_avg", "uniform")


def _torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def coupling_masks(num_layers: int = NUM_COUPLING_LAYERS) -> np.ndarray:
  """[num_layers, 2] float32: [0, 1], [1, 0], ... (the official `flow.mask` buffer)."""
  return np.array([[0, 1], [1, 0]] * (num_layers // 2) + [[0, 1]] * (num_layers % 2),
                  np.float32)


# ---- pure functions of the flow weights --------------------------------------------------

# One MLP is a tuple of (kernel [in, out], bias [out]) per Linear; the flow weights are a
# tuple over coupling layers of (s MLP, t MLP).
FlowWeights = tuple[tuple[tuple[tuple[jax.Array, jax.Array], ...], ...], ...]


def _mlp(layers: tuple[tuple[jax.Array, jax.Array], ...], x: jax.Array, tanh: bool) -> jax.Array:
  for j, (kernel, bias) in enumerate(layers):
    x = x @ kernel + bias
    if j < len(layers) - 1:
      x = nn.leaky_relu(x, _LEAKY_SLOPE)
  return jnp.tanh(x) if tanh else x


def flow_inverse(weights: FlowWeights, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Official `backward_p`: x [..., 2] -> (z [..., 2], log|det dz/dx| [...])."""
  masks = coupling_masks(len(weights))
  z, log_det = x, jnp.zeros(x.shape[:-1], x.dtype)
  for i in reversed(range(len(weights))):
    s_net, t_net = weights[i]
    mask = masks[i]
    z_masked = mask * z
    s = _mlp(s_net, z_masked, tanh=True) * (1 - mask)
    t = _mlp(t_net, z_masked, tanh=False) * (1 - mask)
    z = (1 - mask) * (z - t) * jnp.exp(-s) + z_masked
    log_det = log_det - s.sum(axis=-1)
  return z, log_det


def flow_forward(weights: FlowWeights, z: jax.Array) -> jax.Array:
  """Official `forward_p`: z [..., 2] -> x [..., 2], the inverse of `flow_inverse`."""
  masks = coupling_masks(len(weights))
  x = z
  for i in range(len(weights)):
    s_net, t_net = weights[i]
    mask = masks[i]
    x_masked = x * mask
    s = _mlp(s_net, x_masked, tanh=True) * (1 - mask)
    t = _mlp(t_net, x_masked, tanh=False) * (1 - mask)
    x = x_masked + (1 - mask) * (x * jnp.exp(s) + t)
  return x


def prior_log_prob(z: jax.Array) -> jax.Array:
  """log N(z; 0, I_2), torch `MultivariateNormal(zeros(2), eye(2)).log_prob`: [..., 2] -> [...]."""
  return -0.5 * jnp.sum(jnp.square(z), axis=-1) - math.log(2 * math.pi)


def flow_log_prob(weights: FlowWeights, x: jax.Array) -> jax.Array:
  """Official `RealNVP.log_prob`: log G(x) = log N(z) + log|det dz/dx|; [..., 2] -> [...]."""
  z, log_det = flow_inverse(weights, x)
  return prior_log_prob(z) + log_det


def flow_log_prob_chunked(weights: FlowWeights, x: jax.Array) -> jax.Array:
  """`flow_log_prob` on x [N, P, 2] -> [N, P], ~CHUNK_POINTS points per rematerialised step."""
  rows_per_step = max(1, CHUNK_POINTS // max(1, x.shape[1]))
  if rows_per_step >= x.shape[0]:
    return flow_log_prob(weights, x)
  step = jax.checkpoint(lambda rows: flow_log_prob(weights, rows))
  return jax.lax.map(step, x, batch_size=rows_per_step)


# ---- modules ------------------------------------------------------------------------------

class _LinearWeights(nn.Module):
  """The parameters of one torch `nn.Linear(in_features, features)`: (kernel [in, out], bias)."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", _torch_kernel_init, (self.in_features, self.features),
                        jnp.float32)
    bias = self.param("bias", _torch_bias_init(self.in_features), (self.features,), jnp.float32)
    return kernel, bias


class _CouplingNetWeights(nn.Module):
  """Official `nets()` / `nett()`: Linear(2, 64), Linear(64, 64), Linear(64, 2) at the
  Sequential indices 0, 2, 4 (LeakyReLUs, and Tanh for s, hold no parameters)."""
  hidden: int = HIDDEN

  @nn.compact
  def __call__(self):
    dims = ((2, self.hidden), (self.hidden, self.hidden), (self.hidden, 2))
    return tuple(_LinearWeights(i, o, name=f"linear{2 * j}")() for j, (i, o) in enumerate(dims))


class RealNVP(nn.Module):
  """The official RealNVP on R^2: `__call__(x [..., 2]) -> log G(x) [...]` (float32)."""
  num_layers: int = NUM_COUPLING_LAYERS
  hidden: int = HIDDEN

  def setup(self):
    self.s = [_CouplingNetWeights(self.hidden, name=f"s{i}") for i in range(self.num_layers)]
    self.t = [_CouplingNetWeights(self.hidden, name=f"t{i}") for i in range(self.num_layers)]

  def weights(self) -> FlowWeights:
    return tuple((s(), t()) for s, t in zip(self.s, self.t))

  def __call__(self, x: jax.Array) -> jax.Array:
    return flow_log_prob(self.weights(), x.astype(jnp.float32))

  def inverse(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return flow_inverse(self.weights(), x.astype(jnp.float32))

  def forward(self, z: jax.Array) -> jax.Array:
    return flow_forward(self.weights(), z.astype(jnp.float32))


class NormLinear(nn.Module):
  """Official `Linear`: y = x W^T [/ ||x||_2 per row] + b; x [B, C] -> [B, features] float32.

  `kernel` [C, features] = torch `linear.weight`.T, init xavier-uniform with gain 0.01;
  `bias` torch default U(-1/sqrt(C), 1/sqrt(C)).
  """
  features: int
  norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    kernel = self.param("kernel", _xavier_001, (x.shape[-1], self.features), jnp.float32)
    y = x @ kernel
    if self.norm:
      y = y / jnp.linalg.norm(x, axis=1, keepdims=True)
    return y + self.param("bias", _torch_bias_init(x.shape[-1]), (self.features,), jnp.float32)


class RegressFlowHead(nn.Module):
  """The head of the official `RegressFlow`: feature [B, C] -> dict of float32 arrays.

  mu_hat [B, K, 2]: `fc_coord` (normalised), in RLE's normalised coordinates
    uv = xy_input / input_wh - 0.5 (x before y);
  sigma_hat [B, K, 2]: sigmoid(`fc_sigma`), in the same units;
  log_phi [B, K] (only with `target_uv` [B, K, 2]): log G((mu_hat - target_uv) / sigma_hat),
    the official `log_phi` at bar_mu (note the sign: prediction minus ground truth);
  grid_log_phi [B, K, P] (only with `grid_uv` [P, 2]): log G((mu_hat - p) / sigma_hat) at
    every point p, the density SADI-Net renders as H2 (evaluated in rematerialised chunks).
  """
  num_keypoints: int

  def setup(self):
    self.fc_coord = NormLinear(self.num_keypoints * 2)
    self.fc_sigma = NormLinear(self.num_keypoints * 2, norm=False)
    self.flow = RealNVP()

  def __call__(self, feature: jax.Array, *, target_uv: jax.Array | None = None,
               grid_uv: jax.Array | None = None) -> dict[str, jax.Array]:
    batch, k = feature.shape[0], self.num_keypoints
    mu_hat = self.fc_coord(feature).reshape(batch, k, 2)
    sigma_hat = jax.nn.sigmoid(self.fc_sigma(feature).reshape(batch, k, 2))
    flow_weights = self.flow.weights()  # always, so that `init` creates the flow
    out = {"mu_hat": mu_hat, "sigma_hat": sigma_hat}
    if target_uv is not None:
      bar_mu = (mu_hat - target_uv.astype(jnp.float32)) / sigma_hat
      out["log_phi"] = flow_log_prob(flow_weights, bar_mu)
    if grid_uv is not None:
      bar = (mu_hat[:, :, None] - grid_uv.astype(jnp.float32)) / sigma_hat[:, :, None]
      log_phi = flow_log_prob_chunked(flow_weights, bar.reshape(batch * k, -1, 2))
      out["grid_log_phi"] = log_phi.reshape(batch, k, -1)
    return out


# ---- official state_dict import -----------------------------------------------------------

_COMPONENT_RULES = (
    (re.compile(r"fc_(coord|sigma)"), r"fc_\1.linear"),
    (re.compile(r"(s|t)(\d+)"), r"\1.\2"),
    (re.compile(r"linear(\d)"), r"\1"),
)


def torch_key(path: tuple[str, ...]) -> str:
  """Official key of one head parameter, e.g. ("flow", "s3", "linear2", "kernel") ->
  "flow.s.3.2.weight"."""
  return weights_lib.rewrite_path(_COMPONENT_RULES, "params", path)


def head_from_torch(state_dict: Mapping[str, Any], prefix: str = ""
                    ) -> tuple[RegressFlowHead, dict[str, Any]]:
  """(head, {"params": ...}) from the `fc_coord`, `fc_sigma` and `flow` keys of an official
  RegressFlow state_dict (keys after `prefix`; other keys are ignored). Raises ValueError
  naming missing or mis-shaped keys, and a `flow.mask` other than the official one."""
  state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  weights_lib.require_keys(state, ("fc_coord.linear.weight",), "RegressFlow head")
  out2, channels = np.shape(state["fc_coord.linear.weight"])
  head = RegressFlowHead(num_keypoints=out2 // 2)
  mask = state.get("flow.mask")
  if mask is None or not np.array_equal(np.asarray(mask), coupling_masks()):
    raise ValueError(f"flow.mask must be the official {coupling_masks().tolist()}, got "
                     f"{None if mask is None else np.asarray(mask).tolist()}")
  expected = jax.eval_shape(head.init, jax.random.key(0), jnp.zeros((1, channels)))["params"]
  params, problems = {}, []
  for path, spec in flax.traverse_util.flatten_dict(flax.core.unfreeze(expected)).items():
    key = torch_key(path)
    if key not in state:
      problems.append(f"missing {prefix}{key}")
      continue
    tensor = np.asarray(state[key], np.float32)
    torch_shape = spec.shape[::-1] if path[-1] == "kernel" else spec.shape  # Linear: [out, in]
    if tensor.shape != torch_shape:
      problems.append(f"mis-shaped {prefix}{key}: got {tensor.shape}, expected {torch_shape}")
      continue
    params[path] = tensor.T if path[-1] == "kernel" else tensor
  if problems:
    raise ValueError("state_dict does not match RegressFlowHead: " + "; ".join(problems))
  return head, {"params": flax.traverse_util.unflatten_dict(params)}
