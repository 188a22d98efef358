"""From a config to the data of one experiment: source domains with their fold split, and the unseen target."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections
import numpy as np

from data_pipelines import base_builder, folds, registry
from wbcdg_jax import config_validation

SYNTHETIC_PREFIX = "synthetic_wbc/"
DOMAIN_OPTIONS_FIELD = "config.data.domain_options"
# Builder options that other fields of config.data set for every domain (`builder_options`): domain_options must
# not give them too, or one run could store and read two sizes.
OPTIONS_FROM_FIELDS = {"image_size": "config.data.stored_size", "fov_um": "config.data.fov_um",
                       "scale": "config.data.synthetic_scale"}
# Config fields that a builder derives from the registry name or from another option, so no option to give.
_DERIVED_OPTIONS = {"domain": "the registry name synthetic_wbc/<domain>", "lab": "the registry name "
                    "labelled_folders/<lab>", "table": "the option mapping", "mapping_source": "the option mapping"}
# Options that a builder's from_options takes besides its config's fields (LabelledFoldersConfig: `mapping`).
_EXTRA_OPTIONS = {"labelled_folders": ("mapping",)}


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


def _as_mapping(value: Any) -> dict | None:
  """A ConfigDict or dict as a plain dict of its (top-level) entries; None for anything else."""
  if isinstance(value, ml_collections.ConfigDict):
    return {k: value[k] for k in value.keys()}
  if isinstance(value, Mapping):
    return dict(value)
  return None


def _has_variants(builder: str) -> bool:
  """Whether registry names of `builder` take a '/<variant>' part (WbcConfig.from_options refuses one)."""
  from_options = registry.BUILDERS[builder].CONFIG_CLS.from_options
  return from_options.__func__ is not base_builder.WbcConfig.from_options.__func__


def domain_option_names(builder: str) -> tuple[str, ...]:
  """The options config.data.domain_options may give domains of `builder` (a registry builder name)."""
  own = registry.BUILDERS[builder].CONFIG_CLS.option_names()
  return tuple(n for n in own if n not in OPTIONS_FROM_FIELDS and n not in _DERIVED_OPTIONS) + _EXTRA_OPTIONS.get(
      builder, ())


def _entry_problems(key: Any, options: Any) -> list[str]:
  """Problems of one entry config.data.domain_options[key] = options."""
  if not isinstance(key, str):
    return [f"{DOMAIN_OPTIONS_FIELD} has the key {key!r}: keys are domain names (str), e.g. 'acevedo20'"]
  field = f"{DOMAIN_OPTIONS_FIELD}.{key}"
  builder, _, variant = key.partition("/")
  if builder not in registry.BUILDERS:
    return [f"{field}: {key!r} is no dataset; use a builder name ({', '.join(registry.BUILDERS)}) or a registry "
            f"name ({', '.join(registry.available())})"]
  if variant and not _has_variants(builder):
    return [f"{field}: {builder} has no '/<variant>' part; use {builder!r}"]
  entries = _as_mapping(options)
  if entries is None:
    return [f"{field} should be a mapping of builder option -> value, e.g. {{'drop_odd_sized': True}}, got "
            f"{type(options).__name__} {options!r}"]
  config_cls = registry.BUILDERS[builder].CONFIG_CLS
  own, valid = config_cls.option_names(), domain_option_names(builder)
  defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
  problems = []
  for option, value in entries.items():
    name = f"{field}.{option}"
    if option in OPTIONS_FROM_FIELDS and option in own:
      problems.append(f"{name}: {option} is set for every domain by {OPTIONS_FROM_FIELDS[option]}; set that "
                      f"field instead")
    elif option in _DERIVED_OPTIONS and option in own:
      problems.append(f"{name}: {option} comes from {_DERIVED_OPTIONS[option]}, it is no option to give")
    elif option not in valid:
      problems.append(f"{name} is not an option of {builder} ({config_cls.__name__}); valid options: "
                      f"{', '.join(valid)}")
    else:
      problem = config_validation.type_problem(name, defaults.get(option), value)
      if problem:
        problems.append(problem)
  return problems


def _domain_options_table(config: ml_collections.ConfigDict) -> dict:
  """config.data.domain_options as a dict ({} when the config has no such field)."""
  table = config.data.get("domain_options", None)  # .get: configs saved before the field have none
  if table is None:
    return {}
  entries = _as_mapping(table)
  if entries is None:
    raise ValueError(f"{DOMAIN_OPTIONS_FIELD} should be a mapping of domain name -> {{option: value}}, got "
                     f"{type(table).__name__} {table!r}")
  return entries


def domain_options_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Checks config.data.domain_options without reading any data; one message per problem, each naming the
  field (config.data.domain_options.<name>[.<option>]): keys that are no builder or registry name, entries that
  are no mapping, options the builder does not know (the valid ones are listed), options set by other fields
  (image_size, fov_um, scale: the field to use is named) and values of the wrong type. [] when it is fine or
  absent (configs saved before the field)."""
  try:
    table = _domain_options_table(config)
  except ValueError as e:
    return [str(e)]
  return [problem for key, options in table.items() for problem in _entry_problems(key, options)]


def domain_options(config: ml_collections.ConfigDict, name: str) -> dict:
  """The builder options config.data.domain_options gives domain `name` (a registry name).

  The entry of its builder ("synthetic_wbc") applies to every domain of that builder and the entry of the full
  name ("synthetic_wbc/matek19_like") to that domain alone; both are merged, the full name's options winning.

  Raises:
    ValueError: an entry used here is invalid (see `domain_options_problems`).
  """
  table = _domain_options_table(config)
  merged = {}
  for key in dict.fromkeys((name.partition("/")[0], name)):  # The builder's entry first; once when they agree.
    if key in table:
      problems = _entry_problems(key, table[key])
      if problems:
        raise ValueError("invalid " + "; ".join(problems))
      merged.update({k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
                     for k, v in _as_mapping(table[key]).items()})
  return merged


def builder_options(config: ml_collections.ConfigDict, name: str) -> dict:
  """Options that select one stored variant of dataset `name`: image_size and fov_um from config.data.stored_size
  and fov_um, scale from config.data.synthetic_scale for synthetic domains, and the domain's entries of
  config.data.domain_options (e.g. acevedo20's drop_odd_sized; see `domain_options`)."""
  options = domain_options(config, name)
  options.update(image_size=int(config.data.stored_size), fov_um=float(config.data.fov_um))
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
