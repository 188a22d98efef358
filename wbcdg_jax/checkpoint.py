"""Orbax checkpoints: the full train state with the grain iterator state, and the selected (best) model.

Layout of a work directory (one training stage):

  config.json              the exact config of the run (written before any compute)
  checkpoints/<step>/      latest states for resuming: `state` (TrainState) + `data_iter` (grain iterator state;
                           the step's metadata says which reader wrote it: `reader`)
  best/<step>/             the model selected by source-validation F1-macro: `model` (params, batch_stats) +
                           `metrics` (JSON)

Orbax writes each step into a temporary folder and renames it when complete, so a run killed in the middle of a
save still has its previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from data_pipelines import pipeline
from wbcdg_jax import files
from wbcdg_jax.classes import CLASS_NAMES
from wbcdg_jax.models import IMPLEMENTATION_FIELDS

CONFIG_FILE = "config.json"


class StateCheckpoints:
  """Latest train states plus data-iterator states, for exact resumption."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data_iter"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any, *, reader: dict | None = None) -> None:
    """Saves `state` and `data_iter`'s grain state as `step`; `reader` (JSON) describes the iterator whose
    state this is (`reader_of` returns it): grain's state has a layout of its own per number of worker processes."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      args["data_iter"] = pipeline.iterator_save_args(data_iter)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True,
                      custom_metadata={"reader": reader} if reader is not None else None)

  def reader_of(self, step: int) -> dict | None:
    """The `reader` saved with `step`, or None (none given, or a checkpoint from before the field)."""
    metadata = self.manager.metadata(step)
    return dict((getattr(metadata, "custom_metadata", None) or {}).get("reader") or {}) or None

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
    """Restores the state into the shardings of `abstract_state`; restores `data_iter` in place."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args["data_iter"] = pipeline.iterator_restore_args(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


class BestModel:
  """Keeps the model with the best source-validation score (training-domain validation model selection)."""

  def __init__(self, directory: str, *, metric: str = "val_f1_macro"):
    self.metric = metric
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[metric],
                                             best_mode="max"),
        item_names=("model", "metrics"))

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def best_metrics(self) -> dict | None:
    step = self.best_step()
    if step is None:
      return None
    return dict(self.manager.restore(step, args=ocp.args.Composite(metrics=ocp.args.JsonRestore()))["metrics"])

  def offer(self, step: int, model_vars: dict, metrics: dict) -> bool:
    """Saves the model if `metrics[metric]` beats the best so far; returns whether it did."""
    best = self.best_metrics()
    if best is not None and best[self.metric] >= metrics[self.metric]:
      return False
    self.manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model_vars),
                                                     metrics=ocp.args.JsonSave(metrics)),
                      metrics=metrics, force=True)
    self.manager.wait_until_finished()
    return True

  def restore(self, abstract_vars: Any = None) -> dict:
    step = self.best_step()
    if step is None:
      raise FileNotFoundError(f"no selected model under {self.manager.directory}")
    restore = ocp.args.StandardRestore(abstract_vars) if abstract_vars is not None else ocp.args.StandardRestore()
    return self.manager.restore(step, args=ocp.args.Composite(model=restore))["model"]

  def close(self) -> None:
    self.manager.close()


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (only from process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with files.atomic_open(os.path.join(workdir, CONFIG_FILE)) as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a wbcdg_jax work directory")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _flat(tree: Any, prefix: str = "config") -> dict[str, Any]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
  return {prefix: tree}


def config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """'config.section.field: saved -> new' for every field where `config` differs from the config.json the run
  in `workdir` saved ([] when it saved none)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = _flat(json.load(f))
  new = _flat(json.loads(config.to_json_best_effort()))
  return [f"{k}: {saved.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
          for k in sorted(set(saved) | set(new)) if saved.get(k, "(absent)") != new.get(k, "(absent)")]


@dataclasses.dataclass(frozen=True)
class InferenceBundle:
  """Everything needed to run a trained classifier on new images."""

  model: Any  # wbcdg_jax.models.Classifier
  variables: dict  # {'params', 'batch_stats'}
  class_names: tuple[str, ...]
  image_size: int  # px side the network was trained on
  fov_um: float  # physical field of view images were cropped to
  stored_size: int  # px side of the stored crops the augmentation started from


def final_model_dir(workdir: str) -> str:
  """The folder whose best/ holds a run's final model (stage2/ for decoupled runs that finished stage 2)."""
  stage2 = os.path.join(workdir, "stage2")
  return stage2 if os.path.isdir(os.path.join(stage2, "best")) else workdir


def load_for_inference(workdir: str) -> InferenceBundle:
  """Loads the selected model of a finished (or running) work directory, with its model settings."""
  from wbcdg_jax.models import Classifier  # local import: keeps this module light for tools

  config = load_config(workdir)
  model = model_from_config(config, Classifier)
  best = BestModel(os.path.join(final_model_dir(workdir), "best"))
  try:
    variables = best.restore()
  finally:
    best.close()
  return InferenceBundle(model=model, variables=dict(variables), class_names=CLASS_NAMES,
                         image_size=int(config.model.image_size), fov_um=float(config.data.fov_um),
                         stored_size=int(config.data.stored_size))


def model_from_config(config: ml_collections.ConfigDict, classifier_cls: Any) -> Any:
  """Builds the Classifier a config describes."""
  m = config.model
  # How the same function is computed; configs saved before a field existed get the model's default.
  speed = {field: m[field] for field in IMPLEMENTATION_FIELDS if field in m}
  return classifier_cls(num_classes=len(CLASS_NAMES), depth=int(m.depth), bn_mode=m.bn_mode,
                        dtype=jax.numpy.dtype(m.dtype),
                        head=m.head, mlp_width=int(m.mlp_width), dropout=float(m.dropout), **speed)
