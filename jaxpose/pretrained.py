"""Starting a run from pretrained weights: a whole checkpoint, or an ImageNet backbone.

The papers train their pose networks from an ImageNet-pretrained backbone under a freshly
initialised head: SimpleBaseline (arXiv:1804.06208) from torchvision's ResNet, HRNet
(arXiv:1902.09212) and DEKR (arXiv:2104.02300) from the HRNet-Image-Classification
checkpoints (their official configs' `MODEL.PRETRAINED`, e.g. `hrnet_w32-36af842e.pth`).
`load_into(..., backbone_only=True)` does that; `backbone_only=False` loads a whole
checkpoint of the same model (e.g. a released pose model, to fine-tune or evaluate). Any
file `weights.read_state_dict` reads works: `.pth`, `.npz`, `.safetensors`.

A backbone checkpoint must supply every backbone variable and nothing else but the keys of
its classifier, which are dropped knowingly:

  models (preset prefix)  ImageNet checkpoint                      dropped keys
  simplebaseline, san_    torchvision resnet{18,...,152}           fc.*
  hrnet, dekr, samkr      HRNet/HRNet-Image-Classification         incre_modules.*,
                          @f760c98 `lib/models/cls_hrnet.py`,      downsamp_modules.*,
                          e.g. hrnetv2_w32_imagenet_pretrained     final_layer.*, classifier.*;
                                                                   stage4.{m}.fuse_layers.{i>0}.*
                                                                   if the model has no such fuse
  res2net                 Res2Net/Res2Net-PretrainedModels         fc.*
  hsrnet                  guoruoqian/DetNet_pytorch detnet59.pth   fc.*
                          (DetNet-59 into hsrnet59)

cls_hrnet's stem, layer1, transitions and stages carry pose_hrnet's keys, but its stage 4
ends multi-scale (`multi_scale_output=True`): its last module also fuses into branches 1-3.
DEKR/SAMKR backbones use those fuses; pose HRNet, which outputs branch 0 only, has none,
so they are dropped for it (as the official pose_hrnet `init_weights`, a non-strict load,
ignores them). The official loaders ignore any unmatched key; jaxpose requires every
backbone variable and names what is missing, extra or mis-shaped.
"""

import re
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import ml_collections
import optax

from jaxpose import weights
from jaxpose.errors import UserError
from jaxpose.models import dekr_torch_import
from jaxpose.models import hourglass_torch_import
from jaxpose.models import hrnet
from jaxpose.models import hrnet_torch_import
from jaxpose.models import layers
from jaxpose.models import hsr_msnet
from jaxpose.models import res2net_torch_import
from jaxpose.models import samkr
from jaxpose.models import torch_import


class Family(NamedTuple):
  """How checkpoints map onto one model family (see the importer modules)."""
  torch_key: Callable[[str, tuple[str, ...]], str]
  kernel_axes: Callable[[tuple[str, ...]], Any]
  convert: Callable[..., dict[str, Any]] | None  # (state_dict, model): a whole checkpoint
  in_backbone: Callable[[tuple[str, ...]], bool] | None  # flax paths an ImageNet checkpoint fills
  classifier_keys: re.Pattern | None  # that checkpoint's keys dropped knowingly
  input_hw: tuple[int, int] = (32, 32)  # an input the model accepts, for its shapes


def _under_backbone(path: tuple[str, ...]) -> bool:
  return path[0] == "backbone"


def _not_fc(path: tuple[str, ...]) -> bool:
  return path[0] != "fc"


_TORCHVISION_FC = re.compile(r"fc\..*")
_CLS_HRNET_HEAD = re.compile(r"(incre_modules|downsamp_modules|final_layer|classifier)\..*"
                             r"|stage4\.\d+\.fuse_layers\.[1-9]\..*")

# Preset name prefix -> family. SAN and HSRNet have no whole-checkpoint importer (no
# official code): only their backbones (a torchvision ResNet, a DetNet-59) load.
FAMILIES = {
    "simplebaseline": Family(torch_import.torch_key, torch_import.kernel_axes,
                             torch_import.simple_baseline_from_torch, _under_backbone,
                             _TORCHVISION_FC),
    "san_": Family(torch_import.torch_key, torch_import.kernel_axes, None, _under_backbone,
                   _TORCHVISION_FC),
    "hrnet": Family(hrnet_torch_import.torch_key, hrnet_torch_import.kernel_axes,
                    hrnet_torch_import.hrnet_from_torch, _under_backbone, _CLS_HRNET_HEAD),
    "dekr": Family(dekr_torch_import.torch_key, dekr_torch_import.kernel_axes,
                   dekr_torch_import.convert, _under_backbone, _CLS_HRNET_HEAD),
    "samkr": Family(hrnet_torch_import.torch_key, hrnet_torch_import.kernel_axes,
                    samkr.convert_torch, _under_backbone, _CLS_HRNET_HEAD),
    "hsrnet": Family(hsr_msnet.torch_key, hsr_msnet.kernel_axes, None, _under_backbone,
                     _TORCHVISION_FC),
    "hourglass": Family(hourglass_torch_import.torch_key, hourglass_torch_import.kernel_axes,
                        hourglass_torch_import.convert, None, None, input_hw=(64, 64)),
    "res2net": Family(res2net_torch_import.torch_key, res2net_torch_import.kernel_axes,
                      res2net_torch_import.convert, _not_fc, _TORCHVISION_FC),
}


def family_of(model_name: str) -> Family:
  """The family of preset `model_name` (longest matching prefix); UserError if none."""
  prefixes = [prefix for prefix in FAMILIES if model_name.startswith(prefix)]
  if not prefixes:
    raise UserError(f"model {model_name!r}: no checkpoint importer; pretrained weights load "
                    f"into {', '.join(f'{p}*' for p in sorted(FAMILIES))}")
  return FAMILIES[max(prefixes, key=len)]


def _one_line(error: Exception) -> str:
  """weights.convert's report ("... does not match X:" then a line per kind) on one line."""
  first, *rest = str(error).splitlines()
  return " ".join([first, " / ".join(line.strip() for line in rest)]).strip()


def merged(variables: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
  """`variables` ({"params", "batch_stats"}) with the leaves of `loaded` put in."""
  result = {}
  for collection in ("params", "batch_stats"):
    fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get(collection, {})))
    new = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded.get(collection, {})))
    # The importer saw the same module, so a difference is the caller's bug, not the file's.
    for path, value in new.items():
      if path not in fresh or value.shape != fresh[path].shape:
        raise ValueError(f"{collection}/{'/'.join(path)}: loaded {value.shape}, given "
                         f"{getattr(fresh.get(path), 'shape', 'nothing')}; were the variables "
                         "made by the same model?")
    result[collection] = flax.traverse_util.unflatten_dict({**fresh, **new})
  return result


def load(state_dict_path: str, model_name: str, *, model: nn.Module, backbone_only: bool
         ) -> dict[str, Any]:
  """{"params", "batch_stats"} float32 numpy read from a checkpoint for `model`: only the
  backbone's variables if `backbone_only`, else all. Arguments as `load_into`'s."""
  family = family_of(model_name)
  if backbone_only and family.in_backbone is None:
    supported = sorted(p for p, f in FAMILIES.items() if f.in_backbone)
    raise UserError(f"{state_dict_path}: model {model_name!r} has no ImageNet backbone to "
                    f"load (backbones load into {', '.join(f'{p}*' for p in supported)}); "
                    "load a whole checkpoint instead (backbone_only=False)")
  if not backbone_only and family.convert is None:
    raise UserError(f"{state_dict_path}: model {model_name!r} has no whole-checkpoint "
                    "importer; only its ImageNet backbone loads (backbone_only=True)")
  state_dict = weights.read_state_dict(state_dict_path)
  try:
    if backbone_only:
      # Through the unrolled layout, which has the checkpoint's per-module keys.
      loaded = weights.convert(state_dict, layers.unrolled(model), family.torch_key,
                               family.kernel_axes, input_hw=family.input_hw,
                               select=family.in_backbone,
                               drop=family.classifier_keys.fullmatch)
      return hrnet.backbone_scanned_layout(loaded, model)
    return family.convert(state_dict, model)
  except ValueError as error:
    what = "loading the backbone only" if backbone_only else "loading a whole checkpoint"
    raise UserError(f"{state_dict_path}: {what}: {_one_line(error)}") from None


def load_into(variables: dict[str, Any], state_dict_path: str, model_name: str, *,
              model: nn.Module, backbone_only: bool) -> dict[str, Any]:
  """New {"params", "batch_stats"}: `variables` with the checkpoint's weights put in.

  variables: the fresh variables of `model` (their values stay where nothing is loaded).
  state_dict_path: a `.pth`, `.npz` or `.safetensors` file of torch keys.
  model_name: the preset name; its prefix picks the family (`FAMILIES`).
  model: the module itself (its widths and keypoint count are not in the name).
  backbone_only: True loads an ImageNet classifier checkpoint into the backbone (table in
    the module docstring) and keeps the head's fresh values; False loads every variable
    from a checkpoint of the same model.
  Raises UserError naming the file and every missing, extra or mis-shaped key.
  """
  loaded = load(state_dict_path, model_name, model=model, backbone_only=backbone_only)
  return merged(variables, loaded)


def read_init_from(config: ml_collections.ConfigDict, model: nn.Module) -> dict[str, Any] | None:
  """The variables `config.model.init_from` holds for `model` (None if it is "").

  Called before the fresh state is built, so a wrong path or key fails at once, not after
  the init compiles. Raises UserError naming `model.init_from`, the file and the bad keys.
  """
  if not config.model.init_from:
    return None
  try:
    return load(config.model.init_from, config.model.name, model=model,
                backbone_only=config.model.init_backbone_only)
  except UserError as error:
    raise UserError(f"config key model.init_from (model.init_backbone_only="
                    f"{config.model.init_backbone_only}): {error}") from None


def put_into_state(loaded: dict[str, Any] | None, state: Any, tx: optax.GradientTransformation,
                   sharding) -> Any:
  """A just-created TrainState with `loaded` (from `read_init_from`; None: unchanged) put in.

  The optimiser state is re-initialised from the loaded params (an optimiser may keep
  state derived from them); everything is placed with `sharding`. Only for a new run: a
  resumed run restores its trained weights instead.
  """
  if loaded is None:
    return state
  variables = merged({"params": state.params, "batch_stats": state.batch_stats}, loaded)
  params = jax.device_put(variables["params"], sharding)
  return state.replace(params=params,
                       batch_stats=jax.device_put(variables["batch_stats"], sharding),
                       opt_state=jax.jit(tx.init, out_shardings=sharding)(params))
