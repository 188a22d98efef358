"""Checks a run's config before any compute, and the opened data before anything is compiled.

`validate_config(config)` runs in four passes; every message names the field (`config.section.field`), the value
and what was expected, and all problems of a pass are reported together:

  1. structure: every field must exist in the reference schema (configs/base.py's `get_config()`, which every
     algorithm file starts from and only changes values of, plus the optional `AugmentOptions` fields); an
     unknown or misspelt one is named with the closest known field ("did you mean config.optim.lr?"), a missing
     one is named too;
  2. types: each value against the reference's type (an int is a valid float, a list a valid tuple);
  3. values: ranges and choices (positive sizes, steps and learning rates, known depth/head/dtype/...), and the
     rules that tie fields together (the target is not a source, alignment terms need two sources, the fold
     is in range, stage1_workdir only for decoupled algorithms);
  4. files: init.checkpoint and init.stage1_workdir exist;
  5. a stage-1 run reused by stage 2 (init.stage1_workdir) split and read the same data with the same encoder
     (its config.json: `STAGE1_SHARED`).

`validate_data(config, data)` checks, once the domains are open, that the model's class count matches the label
space each stored domain was built with.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from configs import base
from wbcdg_jax.algorithms import ALGORITHMS, MULTI_DOMAIN_TERMS
from wbcdg_jax.augment import AugmentOptions
from wbcdg_jax.classes import CLASS_NAMES, NUM_CLASSES
from wbcdg_jax.models import BN_MODES, HEAD_KINDS, MAX_POOLS, STAGE_SIZES
from wbcdg_jax.sharding import O_MAJOR_KERNELS
from wbcdg_jax.xla_options import GPU_COMMAND_BUFFERS

DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adam", "adamw")
# Fields whose "" means "none"; None is accepted for them too.
OPTIONAL_TEXT = ("data.target", "init.checkpoint", "init.stage1_workdir")
CHOICES: dict[str, tuple] = {
    "algorithm": tuple(ALGORITHMS),
    "data.target_split": ("fold", "all"),
    "model.depth": tuple(sorted(STAGE_SIZES)),
    "model.bn_mode": BN_MODES,
    "model.max_pool": MAX_POOLS,
    "model.dtype": DTYPES,
    "model.head": HEAD_KINDS,
    "optim.name": OPTIMIZERS,
    "train.on_nonfinite": ("stop", "skip"),
    "train.o_major_kernels": O_MAJOR_KERNELS,
    "train.gpu_command_buffers": tuple(GPU_COMMAND_BUFFERS),
    "dann.schedule": ("ganin", "constant"),
    "boda.metric": ("euclidean", "mahalanobis"),
    "boda.covariance": ("diag", "full"),
}
# (field, lowest allowed value, whether the lowest value itself is allowed)
RANGES: tuple[tuple[str, float, bool], ...] = (
    ("data.synthetic_scale", 0, False), ("data.stored_size", 1, True), ("data.fov_um", 0, False),
    ("data.num_folds", 2, True), ("data.per_domain_batch", 1, True), ("data.eval_batch", 1, True),
    ("data.num_threads", 1, True), ("data.num_workers", 0, True), ("data.prefetch", 0, True),
    ("model.image_size", 1, True), ("model.mlp_width", 1, True), ("optim.lr", 0, False),
    ("optim.weight_decay", 0, True), ("optim.grad_clip", 0, True), ("train.steps", 1, True),
    ("train.log_every", 1, True), ("train.eval_every", 1, True), ("train.checkpoint_every", 1, True),
    ("train.keep_checkpoints", 1, True),
    ("coral.weight", 0, True), ("mmd.weight", 0, True), ("dann.weight", 0, True), ("dann.lambda_", 0, True),
    ("dann.width", 1, True), ("dann.depth", 1, True), ("dann.lr", 0, False), ("boda.weight", 0, True),
    ("boda.nu", 0, True), ("boda.temperature", 0, False), ("boda.start_step", 0, True),
    ("boda.feat_update_freq", 1, True), ("decoupled.steps", 1, True), ("decoupled.lr", 0, False),
)
# jax.random.key keeps 32 bits of a seed (2**32 gives seed 0's draws, while numpy's data order and folds differ),
# and stage 2 seeds with seed + 1000: seeds stay below 2**31.
SEED_LIMIT = 2**31
# (field, upper bound, whether the bound itself is allowed); these fields are also >= 0
UPPER: tuple[tuple[str, float, bool], ...] = (
    ("model.dropout", 1, False), ("dann.dropout", 1, False),
    ("boda.momentum", 1, False),  # 1 would keep the first refresh's statistics for the whole run
    ("seed", SEED_LIMIT, False),
)


class ConfigError(ValueError):
  """The config is invalid; `problems` lists one message per field."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    text = problems[0] if len(problems) == 1 else "invalid config:\n  - " + "\n  - ".join(problems)
    super().__init__(text)


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
  """A file or folder the config names (init.checkpoint, init.stage1_workdir) does not exist."""


# ------------------------------------------------------------------------------------------- reference schema


def reference_config() -> tuple[ml_collections.ConfigDict, set[str]]:
  """The schema user configs are checked against: base.get_config() plus the augmentation fields that
  `AugmentOptions` accepts but base.py leaves at their defaults.

  Returns:
    (reference config, dotted names of the optional fields, e.g. 'config.augment.crop_ratio').
  """
  ref, optional = base.get_config(), set(FREE_FORM)
  with ref.unlocked():
    for f in dataclasses.fields(AugmentOptions):
      if f.name not in ref.augment:
        ref.augment[f.name] = f.default
        optional.add(f"config.augment.{f.name}")
  return ref, optional


# Sections whose keys are the user's (domain names), not a schema's, and which configs saved before them lack:
# their contents are checked by the code that reads them (experiment.domain_options_problems, in pass 3).
FREE_FORM = ("config.data.domain_options",)


def _as_dict(value: Any) -> dict | None:
  if isinstance(value, ml_collections.ConfigDict):
    return {k: value[k] for k in value.keys()}
  if isinstance(value, dict):
    return value
  return None


def _closest(value: Any, choices: Iterable[Any]) -> str | None:
  """The choice most similar to `value` (case-insensitive), as text, or None when nothing is close."""
  by_folded = {str(c).casefold(): str(c) for c in choices}
  close = difflib.get_close_matches(str(value).casefold(), list(by_folded), n=1, cutoff=0.6)
  return by_folded[close[0]] if close else None


def _type_name(value: Any) -> str:
  return type(value).__name__


# Element type of tuple fields whose default is empty (so the reference holds no element to compare with).
EMPTY_TUPLE_ELEMENTS: dict[str, Any] = {"data.stored_variants": ""}


def type_problem(name: str, ref: Any, value: Any) -> str | None:
  """A message when `value` cannot stand for the reference value `ref` of field `name`, else None."""
  if ref is None:
    return None
  if value is None and name.removeprefix("config.") in OPTIONAL_TEXT:
    return None
  if isinstance(ref, bool):
    ok = isinstance(value, (bool, np.bool_))
    expected = "bool"
  elif isinstance(ref, numbers.Integral):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    expected = "int"
  elif isinstance(ref, numbers.Real):
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    expected = "float (or int)"
  elif isinstance(ref, str):
    ok = isinstance(value, str)
    expected = "str"
  elif isinstance(ref, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      return f"{name} should be a tuple (or list), got {_type_name(value)} {value!r}"
    elem = ref[0] if ref else EMPTY_TUPLE_ELEMENTS.get(name.removeprefix("config."))
    if elem is not None:
      for i, item in enumerate(value):
        problem = type_problem(f"{name}[{i}]", elem, item)
        if problem:
          return problem
    return None
  else:
    return None
  return None if ok else f"{name} should be {expected}, got {_type_name(value)} {value!r}"


def _structure_and_types(ref: dict, user: dict, prefix: str, optional: set[str], problems: list[str]) -> None:
  for key in user:
    name = f"{prefix}.{key}"
    if key not in ref:
      close = _closest(key, ref)
      hint = f"; did you mean {prefix}.{close}?" if close else f"; known fields of {prefix}: {', '.join(ref)}"
      problems.append(f"{name} is not a known field{hint}")
      continue
    ref_sub, user_sub = _as_dict(ref[key]), _as_dict(user[key])
    if name in FREE_FORM:
      continue
    if ref_sub is not None:
      if user_sub is None:
        problems.append(f"{name} should be a section (ConfigDict) with fields {', '.join(ref_sub)}, got "
                        f"{_type_name(user[key])} {user[key]!r}")
      else:
        _structure_and_types(ref_sub, user_sub, name, optional, problems)
      continue
    problem = type_problem(name, ref[key], user[key])
    if problem:
      problems.append(problem)
  for key in ref:
    if key not in user and f"{prefix}.{key}" not in optional:
      problems.append(f"{prefix}.{key} is missing (configs/base.py defines it; start config files from "
                      f"configs.base.get_config())")


# ---------------------------------------------------------------------------------------------------- values


def _get(config: Any, dotted: str) -> Any:
  for part in dotted.split("."):
    config = config[part]
  return config


def _has(config: Any, dotted: str) -> bool:
  for part in dotted.split("."):
    if part not in config:
      return False
    config = config[part]
  return True


def boda_shrinkage(value: str) -> float | str | None:
  """config.boda.shrinkage: 'auto' (Ledoit-Wolf for full covariances, 0.1 for diagonal ones), 'ledoit_wolf',
  or a number in [0, 1] given as text (so one field holds both kinds). Returns None for 'auto'."""
  if value == "auto":
    return None
  if value == "ledoit_wolf":
    return value
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"config.boda.shrinkage={value!r} is not 'auto', 'ledoit_wolf' or a number") from None
  if not 0.0 <= number <= 1.0:
    raise ValueError(f"config.boda.shrinkage={value!r} is outside [0, 1]")
  return number


def _registry_name_problem(field: str, name: str) -> str | None:
  """A message when `name` cannot be a stored domain's registry name (checked without reading anything)."""
  from data_pipelines import registry  # local import: TFDS is only needed once data names are checked

  builder, _, variant = name.partition("/")
  if builder not in registry.BUILDERS:
    close = _closest(name, registry.available())
    return f"{field}={name!r} is not a known dataset" + (
        f"; did you mean {close!r}?" if close else f"; available: {', '.join(registry.available())}")
  if builder in ("synthetic_wbc", "labelled_folders") and not variant:
    return f"{field}={name!r} needs a '/<variant>' part, e.g. one of {', '.join(registry.available())}"
  if builder not in ("synthetic_wbc", "labelled_folders") and variant:
    return f"{field}={name!r}: {builder} has no '/<variant>' part"
  if builder == "synthetic_wbc" and name not in registry.available():
    synthetic = [n for n in registry.available() if n.startswith("synthetic_wbc/")]
    close = _closest(name, synthetic)
    return f"{field}={name!r} is not a synthetic domain" + (
        f"; did you mean {close!r}?" if close else f"; available: {', '.join(synthetic)}")
  return None


def _value_problems(config: ml_collections.ConfigDict) -> list[str]:
  problems = []
  for field, choices in CHOICES.items():
    value = _get(config, field)
    if value not in choices:
      close = _closest(value, choices) if isinstance(value, str) else None
      hint = f"; did you mean {close!r}?" if close else ""
      problems.append(f"config.{field}={value!r} is not one of {list(choices)}{hint}")
  for field, low, inclusive in RANGES:
    value = _get(config, field)
    bad = not math.isfinite(value) or (value < low if inclusive else value <= low)
    if bad:
      problems.append(f"config.{field}={value!r} must be {'>=' if inclusive else '>'} {low:g}")
  for field, high, inclusive in UPPER:
    value = _get(config, field)
    bad = not math.isfinite(value) or value < 0 or (value > high if inclusive else value >= high)
    if bad:
      problems.append(f"config.{field}={value!r} must be in [0, {high}{']' if inclusive else ')'}")
  try:
    boda_shrinkage(config.boda.shrinkage)
  except ValueError as e:
    problems.append(str(e))
  from wbcdg_jax import experiment  # local import: TFDS is only needed once data fields are checked

  problems += experiment.domain_options_problems(config)
  try:
    AugmentOptions.from_dict(config.augment)
  except ValueError as e:  # AugmentOptions names its field as AugmentOptions.<field>.
    problems.append(str(e).replace("AugmentOptions.", "config.augment.", 1))
  if not config.data.data_dir:
    problems.append("config.data.data_dir is empty: name the folder of the stored datasets")

  sources = list(config.data.sources)
  if not sources:
    problems.append("config.data.sources is empty: name at least one training domain")
  if len(set(sources)) != len(sources):
    problems.append(f"config.data.sources={sources} names a domain twice")
  for i, name in enumerate(sources):
    problem = _registry_name_problem(f"config.data.sources[{i}]", name)
    if problem:
      problems.append(problem)
  target = config.data.target
  if target:
    if target in sources:
      problems.append(f"config.data.target={target!r} is also a source domain (config.data.sources={sources}); "
                      f"the unseen domain must not be trained on")
    problem = _registry_name_problem("config.data.target", target)
    if problem:
      problems.append(problem)
  terms = ALGORITHMS.get(config.algorithm, frozenset())
  aligned = sorted(terms & MULTI_DOMAIN_TERMS)
  if aligned and len(sources) < 2:
    problems.append(f"config.algorithm={config.algorithm!r} aligns source domains ({', '.join(aligned)}) and needs "
                    f"at least two in config.data.sources, got {sources}")
  if not 0 <= config.data.fold < max(config.data.num_folds, 1):
    problems.append(f"config.data.fold={config.data.fold} is outside 0..{config.data.num_folds - 1} "
                    f"(config.data.num_folds={config.data.num_folds})")
  if config.init.stage1_workdir and "decoupled" not in terms:
    problems.append(f"config.init.stage1_workdir is set but config.algorithm={config.algorithm!r} has no stage 2")
  if ("boda" in terms and config.boda.weight > 0 and not config.init.stage1_workdir
      and config.boda.start_step >= config.train.steps):
    problems.append(f"config.boda.start_step={config.boda.start_step} >= config.train.steps={config.train.steps}: "
                    f"the BoDA term would never switch on (the run would train {config.algorithm!r} without it); "
                    f"lower config.boda.start_step or train longer")
  return problems


# Fields a stage-1 run must share with the stage 2 that reuses its encoder (config.init.stage1_workdir): the
# domains and their stored variants, and the fold split (which the seed draws), so that stage 2's source-validation
# and target images were never stage-1 training images; and the encoder's architecture and input size.
STAGE1_SHARED = ("seed", "data.sources", "data.target", "data.target_split", "data.num_folds", "data.fold",
                 "data.stored_size", "data.fov_um", "data.synthetic_scale", "data.stored_variants",
                 "data.domain_options", "model.depth", "model.image_size")


def _plain(value: Any) -> Any:
  """A config value as JSON would hold it (tuples as lists, sections as dicts), for comparing with config.json."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value))


def _stage1_problems(config: ml_collections.ConfigDict, stage1: str) -> list[str]:
  """Differences between this config and that of the stage-1 run in `stage1` (its config.json)."""
  path = os.path.join(stage1, "config.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    return [f"config.init.stage1_workdir={stage1!r} holds no config.json: not a stage-1 run of this project"]
  except json.JSONDecodeError as e:
    return [f"config.init.stage1_workdir={stage1!r}: {path} is not valid JSON ({e})"]
  problems = []
  for field in STAGE1_SHARED:
    mine = _plain(_get(config, field)) if _has(config, field) else None
    theirs = _get(saved, field) if _has(saved, field) else None
    if field == "data.domain_options" and theirs is None:  # a stage-1 run from before the field
      continue
    if mine != theirs:
      problems.append(f"config.{field}={mine!r} differs from the stage-1 run's {theirs!r} ({path}): stage 2 must "
                      f"split and read the data as its stage 1 did, or its validation and target images may be "
                      f"stage-1 training images")
  return problems


def _file_problems(config: ml_collections.ConfigDict) -> list[str]:
  problems = []
  if config.init.checkpoint and not os.path.isfile(config.init.checkpoint):
    problems.append(f"config.init.checkpoint={config.init.checkpoint!r} does not exist (convert ImageNet weights "
                    f"with launch/convert_weights.py, or set it to '' to start from random weights)")
  stage1 = config.init.stage1_workdir
  if stage1 and not os.path.isdir(os.path.join(stage1, "best")):
    what = "does not exist" if not os.path.exists(stage1) else "holds no best/ model (stage 1 has not finished)"
    problems.append(f"config.init.stage1_workdir={stage1!r} {what}")
  return problems


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config` before any data is read or anything is compiled.

  Raises:
    ConfigError (a ValueError) listing every problem of the first failing pass, each naming its field;
    ConfigFileNotFoundError (also a FileNotFoundError) when only files named by the config are missing.
  """
  problems: list[str] = []
  ref, optional = reference_config()
  _structure_and_types(_as_dict(ref), _as_dict(config), "config", optional, problems)
  if problems:
    raise ConfigError(problems)
  problems = _value_problems(config)
  if problems:
    raise ConfigError(problems)
  problems = _file_problems(config)
  if problems:
    raise ConfigFileNotFoundError(problems)
  if config.init.stage1_workdir:
    problems = _stage1_problems(config, config.init.stage1_workdir)
    if problems:
      raise ConfigError(problems)


# ------------------------------------------------------------------------------------------------------ data


def _domain_fields(config: ml_collections.ConfigDict, data: Any) -> Iterable[tuple[str, Any]]:
  for i, domain in enumerate(data.sources):
    yield f"config.data.sources[{i}]={config.data.sources[i]!r}", domain
  if data.target is not None:
    yield f"config.data.target={config.data.target!r}", data.target


def _built_class_names(directory: str) -> list[str] | None:
  """The class names a stored domain was built with (keys of build_report.json's counts), or None if unknown."""
  from data_pipelines import report as report_lib  # local import: keeps the config checks free of TFDS

  path = os.path.join(directory, report_lib.REPORT_FILENAME)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    counts = json.load(f).get("counts")
  return list(counts) if isinstance(counts, dict) else None


def validate_data(config: ml_collections.ConfigDict, data: Any, *, num_classes: int = NUM_CLASSES,
                  class_names: tuple[str, ...] = CLASS_NAMES) -> None:
  """Checks the opened domains against the model before it is built and compiled.

  The model's head predicts `num_classes` logits, one per `wbcdg_jax.classes.CLASS_NAMES` entry; every stored
  domain must have been built with that same label space (the class list of its build_report.json) and hold
  labels in [0, num_classes).

  Args:
    config: the run's config (only used to name the field of each domain).
    data: an `ExperimentData` (.sources, .target; each domain has .labels int [N] and .directory).
    num_classes, class_names: the model's label space.

  Raises:
    ConfigError naming the domain's config field, its directory and both class counts.
  """
  problems = []
  for field, domain in _domain_fields(config, data):
    where = getattr(domain, "directory", "")
    built = _built_class_names(where) if where else None
    if built is not None and tuple(built) != tuple(class_names):
      problems.append(
          f"{field}: the stored dataset in {where} was built with {len(built)} classes ({', '.join(built)}) but "
          f"the model predicts {num_classes} (wbcdg_jax.classes.CLASS_NAMES: {', '.join(class_names)}); rebuild "
          f"it with launch/build_data.py")
      continue
    labels = np.asarray(domain.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      problems.append(
          f"{field}: the stored dataset in {where} has labels in {int(labels.min())}..{int(labels.max())}, i.e. at "
          f"least {int(labels.max()) + 1} classes, but the model predicts {num_classes} "
          f"(wbcdg_jax.classes.NUM_CLASSES); rebuild it with launch/build_data.py")
  if problems:
    raise ConfigError(problems)
