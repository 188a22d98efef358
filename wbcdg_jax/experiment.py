"""From a config to the data of one experiment: source domains with their fold split, and the unseen target."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from data_pipelines import folds, registry

SYNTHETIC_PREFIX = "synthetic_wbc/"


@dataclasses.dataclass(frozen=True)
class ExperimentData:
  """Source domains (domain index = position) with train/validation indices, and the optional target.

  Attributes:
    sources: DomainData of each training domain.
    train_idx, val_idx: per source domain, int64 indices into that domain's records.
    target: DomainData of the unseen domain, or None.
    target_idx: indices of the target's test split (empty when there is no target).
  """

  sources: list
  train_idx: list
  val_idx: list
  target: object | None
  target_idx: np.ndarray

  @property
  def num_domains(self) -> int:
    return len(self.sources)

  def train_labels(self) -> list[np.ndarray]:
    return [d.labels[i] for d, i in zip(self.sources, self.train_idx)]


def builder_options(config: ml_collections.ConfigDict, name: str) -> dict:
  """Options that select one stored variant of dataset `name`."""
  options = {"image_size": int(config.data.stored_size), "fov_um": float(config.data.fov_um)}
  if name.startswith(SYNTHETIC_PREFIX):
    options["scale"] = float(config.data.synthetic_scale)
  return options


def open_domain(config: ml_collections.ConfigDict, name: str):
  """Opens domain `name`; a labelled_folders/<lab> domain is the built variant of that lab that fits the stored
  size (config.data.stored_variants picks one where several are built; see registry.open_domain)."""
  return registry.open_domain(
      name, data_dir=config.data.data_dir,
      build_if_missing=bool(config.data.build_if_missing) and name.startswith(SYNTHETIC_PREFIX),
      stored_variants=tuple(config.data.get("stored_variants", ())),  # .get: configs saved before the field
      **builder_options(config, name))


def load_experiment_data(config: ml_collections.ConfigDict) -> ExperimentData:
  """Opens every domain of the config and splits each with the configured stratified fold."""
  sources, train_idx, val_idx = [], [], []
  for name in config.data.sources:
    domain = open_domain(config, name)
    tr, va = folds.stratified_folds(domain.labels, domain.groups, num_folds=int(config.data.num_folds),
                                    fold=int(config.data.fold), seed=int(config.seed))
    sources.append(domain)
    train_idx.append(np.asarray(tr, np.int64))
    val_idx.append(np.asarray(va, np.int64))
  target, target_idx = None, np.zeros((0,), np.int64)
  if config.data.target:
    target = open_domain(config, config.data.target)
    if config.data.target_split == "all":
      target_idx = np.arange(len(target.labels), dtype=np.int64)
    elif config.data.target_split == "fold":
      _, target_idx = folds.stratified_folds(target.labels, target.groups, num_folds=int(config.data.num_folds),
                                             fold=int(config.data.fold), seed=int(config.seed))
      target_idx = np.asarray(target_idx, np.int64)
    else:
      raise ValueError(f"config.data.target_split={config.data.target_split!r} is not 'fold' or 'all'")
  return ExperimentData(sources, train_idx, val_idx, target, target_idx)
