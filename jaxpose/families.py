"""What the trainer does differently for each kind of model, in one table.

`models.KINDS` names each preset's kind by what its outputs are and how it learns; a
`Family` holds, for one kind, the five things `jaxpose.train` takes from it: the source of a
split, the train input pipeline, the train step, the evaluator and the config schema. The
trainer itself (loop, checkpoints, logging, multi-host) is the same for every kind.

Contracts every family keeps, so the trainer needs no special cases:
  open_split(config, split) -> a random-access source with `len()` and `.scan`
    (`faults.AnnotationScan`: `skipped_persons`, `filtered_persons`);
  train_dataset(config, source, local_batch_size) -> an endless grain iterator of this
    process's rows of each global batch (uint8 `image` first), checkpointable; `source` is
    the main dataset, the pipeline opens and mixes in `data.mixture` (`jaxpose.data.mixture`);
  make_train_step(model, tx, config) -> `train_step(state, batch, rng) -> (state, metrics)`
    on `step.TrainState`, metrics as sums: `loss_sum`, `num_samples`, `labelled_joints`,
    `grad_norm`, `nonfinite_streak`, `data_fingerprint`, `skipped_samples` (more allowed);
  evaluate(config, model, variables, mesh, workdir, step) -> metrics (process 0; {} elsewhere);
  schema() -> the config keys and types of this kind (`configs.common.schema`).
"""

import dataclasses
from typing import Any, Callable

import ml_collections

from configs import common
from jaxpose import bottomup_step
from jaxpose import integral2d_step
from jaxpose import integral_step
from jaxpose import models
from jaxpose import rle_step
from jaxpose import step as step_lib
from jaxpose.data import bottomup_pipeline
from jaxpose.data import integral_pipeline
from jaxpose.data import pipeline
from jaxpose.errors import UserError
from jaxpose.evaluation import bottomup as bottomup_eval
from jaxpose.evaluation import integral as integral_eval
from jaxpose.evaluation import topdown as topdown_eval


@dataclasses.dataclass(frozen=True)
class Family:
  open_split: Callable[[ml_collections.ConfigDict, str], Any]
  train_dataset: Callable[[ml_collections.ConfigDict, Any, int], Any]
  make_train_step: Callable[[Any, Any, ml_collections.ConfigDict], Callable]
  evaluate: Callable[..., dict[str, float]]
  schema: Callable[[], dict]


FAMILIES = {
    # SimpleBaseline, HRNet, stacked hourglass, HSRNet, HSR-MSNet: heatmap MSE, OKS AP.
    "topdown": Family(
        open_split=pipeline.open_split,
        train_dataset=pipeline.train_dataset,
        make_train_step=lambda model, tx, config: step_lib.make_train_step(model, tx),
        evaluate=topdown_eval.evaluate,
        schema=lambda: common.schema("topdown")),
    # DEKR, SAMKR: keypoint + centre heatmaps and offsets, grouped by centres, OKS AP.
    "bottomup": Family(
        open_split=bottomup_pipeline.open_split,
        train_dataset=bottomup_pipeline.train_dataset,
        make_train_step=lambda model, tx, config: bottomup_step.make_bottomup_train_step(
            model, tx, config.loss),
        evaluate=bottomup_eval.evaluate,
        schema=lambda: common.schema("bottomup")),
    # SAN (3D): soft-argmax L1 on Human3.6M frames, MPJPE / PA-MPJPE in camera space.
    "integral": Family(
        open_split=integral_pipeline.open_split,
        train_dataset=integral_pipeline.train_dataset,
        make_train_step=lambda model, tx, config: integral_step.make_train_step(model, tx),
        evaluate=integral_eval.evaluate,
        schema=lambda: common.schema("integral")),
    # SAN (2D): the same soft-argmax L1 on top-down person crops, MPII PCKh / COCO AP.
    "integral_2d": Family(
        open_split=pipeline.open_split,
        train_dataset=integral2d_step.train_dataset,
        make_train_step=lambda model, tx, config: integral_step.make_train_step(model, tx),
        evaluate=topdown_eval.evaluate,
        schema=lambda: common.schema("integral_2d")),
    # SADI-Net: top-down heatmaps H1 + RLE-flow heatmaps H2 (eq. 8), MPII PCKh / COCO AP.
    "topdown_rle": Family(
        open_split=pipeline.open_split,
        train_dataset=lambda config, source, batch_size: pipeline.train_dataset(
            config, source, batch_size, keys=pipeline.RLE_TRAIN_KEYS),
        make_train_step=lambda model, tx, config: rle_step.make_rle_train_step(
            model, tx, config.loss),
        evaluate=topdown_eval.evaluate,
        schema=lambda: common.schema("topdown_rle")),
}


def kind_of(config: ml_collections.ConfigDict) -> str:
  """The kind of `config.model.name`; UserError if the name is unknown."""
  if config.model.name not in models.MODELS:
    raise UserError(f"config key model.name: unknown {config.model.name!r}; "
                    f"known: {sorted(models.MODELS)}")
  return models.KINDS[config.model.name]


def for_config(config: ml_collections.ConfigDict) -> Family:
  """The family that trains `config.model.name`; UserError for a model no family trains."""
  kind = kind_of(config)
  if kind not in FAMILIES:
    trainable = sorted(name for name, k in models.KINDS.items() if k in FAMILIES)
    raise UserError(f"config key model.name: {config.model.name!r} is a {kind} model, which "
                    f"this trainer does not train; it trains: {trainable}")
  return FAMILIES[kind]
