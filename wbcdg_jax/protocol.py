"""The evaluation protocol around single runs: k-fold cross-validation, leave-one-domain-out, and aggregation.

A cross-validation work directory holds one trainer work directory per fold:

  <workdir>/fold_<k>/           metrics.json, config.json, target_predictions.npz, ... (wbcdg_jax/trainer.py)
  <workdir>/crossval.json       mean +- std over folds of F1-micro / F1-macro (source validation, target)

Leave-one-domain-out nests one such directory per held-out domain: `<workdir>/target_<name>/fold_<k>/`.
A fold whose `metrics.json` exists is finished and is never trained again; an interrupted fold resumes from its
checkpoints because the trainer does so by itself.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np
import tqdm

from wbcdg_jax import checkpoint, files
from wbcdg_jax.algorithms import terms_of

METRICS_FILE = "metrics.json"  # the trainer's result file; its presence marks a finished run
CROSSVAL_FILE = "crossval.json"
LODO_FILE = "leave_one_domain_out.json"
SPLITS = ("val", "target")  # pooled source validation split; unseen target domain
SCORES = ("f1_micro", "f1_macro")

TrainFn = Callable[[ml_collections.ConfigDict, str], dict]


def _default_train_fn(config: ml_collections.ConfigDict, workdir: str) -> dict:
  # Imported lazily: the trainer pulls in JAX and the data pipeline, which table-only uses never need.
  from wbcdg_jax import trainer
  return trainer.train_and_evaluate(config, workdir)


def enable_compilation_cache(workdir: str, directory: str | None = None) -> None:
  """Keeps compiled XLA executables in `directory` ('' leaves the cache off).

  None: the directory JAX_COMPILATION_CACHE_DIR names when the environment sets it (one cache shared by every
  run that sees it, as JAX itself reads it), else <workdir>/jax_cache. Every fold (and every rerun) of an
  algorithm compiles the same step and evaluation functions; with the cache the folds after the first load them
  instead of compiling again (about 10-15 s per run on 2 CPU cores).
  """
  if directory is None:
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(workdir, "jax_cache")
  if not directory:
    return
  import jax  # lazily, as in _default_train_fn

  jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


# ------------------------------------------------------------------------------------------------ configs


def load_algorithm_config(name: str, preset: str | None = None) -> ml_collections.ConfigDict:
  """Returns `configs/<name>.py`'s get_config(preset) (the same config `--config=configs/<name>.py:<preset>` gives).

  Raises:
    ValueError naming the file when configs/<name>.py does not exist.
  """
  try:
    module = importlib.import_module(f"configs.{name}")
  except ModuleNotFoundError as e:
    raise ValueError(f"unknown algorithm config {name!r}: configs/{name}.py does not exist") from e
  return module.get_config(preset)


def parse_value(text: str, current):
  """Parses the command-line text `text` into the type of the config field's current value `current`.

  A tuple is a Python literal ("('a', 'b')", "(0.7, 1.0)") or comma-separated items ("a,b"; each item of the
  type of the current first item, text when the tuple is empty).

  Raises:
    ValueError saying what `text` should have been.
  """
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"{text!r} is not a boolean (true/false/1/0)")
    return text.lower() in ("true", "1")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"{text!r} is not an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"{text!r} is not a number") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):  # bare items: a,b
      item = current[0] if current else ""
      value = tuple(parse_value(part.strip(), item) for part in text.split(",") if part.strip())
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `section.field=value` strings (as `--config.section.field=value` would) to a copy of `config`.

  Raises:
    ValueError naming the override when it has no '=', names a field the config does not have, or gives a value
    that does not parse as the field's type.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r} is not of the form section.field=value")
    key, text = item.split("=", 1)
    *path, field = key.strip().split(".")
    node = config
    for part in path:
      if part not in node:
        raise ValueError(f"override {item!r}: config has no section {part!r}")
      node = node[part]
    if field not in node:
      raise ValueError(f"override {item!r}: config has no field {key!r}")
    try:
      node[field] = parse_value(text, node[field])
    except ValueError as e:
      raise ValueError(f"override {item!r}: {e} (config.{key.strip()} is of type {type(node[field]).__name__})"
                       ) from None
  return config


# ------------------------------------------------------------------------------------------------- one run


def is_finished(workdir: str) -> bool:
  """True when the trainer has written metrics.json in `workdir` (the run is complete)."""
  return os.path.exists(os.path.join(workdir, METRICS_FILE))


def load_metrics(workdir: str) -> dict:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: the run in {workdir} has not finished")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:  # written in place by a version before files.atomic_open, and cut by a kill
      raise ValueError(f"{path} is not valid JSON ({e}): delete it and run the same command again to re-report "
                       f"the run in {workdir} from its checkpoints") from e


def predictions_dir(workdir: str, algorithm: str) -> str:
  """The directory holding the scored target_predictions.npz (stage 2 for decoupled algorithms)."""
  return os.path.join(workdir, "stage2") if "decoupled" in terms_of(algorithm) else workdir


def run_or_skip(config: ml_collections.ConfigDict, workdir: str, train_fn: TrainFn | None = None) -> dict:
  """Returns the metrics of the run in `workdir`, training it first unless its metrics.json already exists."""
  if is_finished(workdir):
    changes = checkpoint.config_changes(workdir, config)
    if changes:  # the finished run's scores are kept, not those of the config asked for
      logging.warning("kept the finished run in %s, made with another config (use another folder to train this one):"
                      " %s", workdir, "; ".join(changes))
    return load_metrics(workdir)
  return (train_fn or _default_train_fn)(config, workdir)


# ------------------------------------------------------------------------------------------------ aggregation


def mean_std(values: Sequence[float]) -> dict:
  """{'mean', 'std' (population, ddof=0; 0 for one value), 'values', 'n'} of a list of scores."""
  v = np.asarray(list(values), np.float64)
  if v.size == 0:
    return {"mean": float("nan"), "std": float("nan"), "values": [], "n": 0}
  return {"mean": float(v.mean()), "std": float(v.std()), "values": v.tolist(), "n": int(v.size)}


def aggregate(results: Sequence[dict]) -> dict:
  """Mean +- std over runs of F1-micro/F1-macro of each split present in every result.

  Args:
    results: metrics.json dicts of the folds (or seeds x folds) of one setting.

  Returns:
    {split: {score: mean_std}} for split in ('val', 'target') where every result has it.
  """
  out = {}
  for split in SPLITS:
    if results and all(split in r for r in results):
      out[split] = {s: mean_std([r[split][s] for r in results]) for s in SCORES}
  return out


def fold_list(config: ml_collections.ConfigDict, folds: Sequence[int] | None) -> list[int]:
  """The folds to run: `folds`, or all of 0..config.data.num_folds-1; errors name the bad fold."""
  num = int(config.data.num_folds)
  chosen = list(range(num)) if not folds else [int(k) for k in folds]
  for k in chosen:
    if not 0 <= k < num:
      raise ValueError(f"fold {k} is outside 0..{num - 1} (config.data.num_folds={num})")
  return chosen


def fold_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold_{fold}")


def run_crossval(config: ml_collections.ConfigDict, workdir: str, *, folds: Sequence[int] | None = None,
                 train_fn: TrainFn | None = None) -> dict:
  """Trains (or collects) every fold of `config` in `workdir/fold_<k>` and writes `workdir/crossval.json`.

  Returns:
    {'algorithm', 'folds': [k], 'runs': {k: fold workdir}, 'aggregate': {split: {score: mean_std}}}.
  """
  chosen = fold_list(config, folds)
  if config.get("init", {}).get("stage1_workdir") and len(chosen) > 1:
    raise ValueError(f"config.init.stage1_workdir={config.init.stage1_workdir!r} is one stage-1 run, trained on one "
                     f"fold: it cannot serve folds {chosen} (its training images are the other folds' validation "
                     f"images); leave it empty to train each fold's stage 1, or run only its fold")
  results, runs = [], {}
  for k in tqdm.tqdm(chosen, desc=f"crossval {config.algorithm}", unit="fold"):
    fold_config = apply_overrides(config, [f"data.fold={k}"])
    runs[k] = fold_dir(workdir, k)
    results.append(run_or_skip(fold_config, runs[k], train_fn))
  summary = {"algorithm": config.algorithm, "sources": list(config.data.sources), "target": config.data.target,
             "folds": chosen, "runs": {str(k): v for k, v in runs.items()}, "aggregate": aggregate(results)}
  files.write_json(os.path.join(workdir, CROSSVAL_FILE), summary)
  return summary


def domain_slug(name: str) -> str:
  """A directory-safe name for a domain ('synthetic_wbc/int20_like' -> 'synthetic_wbc_int20_like')."""
  return name.replace("/", "_")


def run_leave_one_domain_out(config: ml_collections.ConfigDict, workdir: str, *,
                             folds: Sequence[int] | None = None, train_fn: TrainFn | None = None) -> dict:
  """Each domain of sources + target becomes the unseen target in turn (the others, in order, are the sources).

  Writes `workdir/target_<slug>/` cross-validations and `workdir/leave_one_domain_out.json`.

  Returns:
    {'per_target': {domain: crossval summary}, 'mean_over_targets': {split: {score: mean_std of target means}}}.
  """
  domains = list(config.data.sources) + ([config.data.target] if config.data.target else [])
  if len(domains) < 2:
    raise ValueError(f"leave-one-domain-out needs at least two domains in config.data.sources + target, "
                     f"got {domains}")
  per_target = {}
  for held_out in domains:
    others = tuple(d for d in domains if d != held_out)
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.data.sources, sub.data.target = others, held_out
    per_target[held_out] = run_crossval(sub, os.path.join(workdir, f"target_{domain_slug(held_out)}"),
                                        folds=folds, train_fn=train_fn)
  means = {}
  for split in SPLITS:
    if all(split in s["aggregate"] for s in per_target.values()):
      means[split] = {m: mean_std([s["aggregate"][split][m]["mean"] for s in per_target.values()])
                      for m in SCORES}
  summary = {"algorithm": config.algorithm, "domains": domains, "per_target": per_target,
             "mean_over_targets": means}
  files.write_json(os.path.join(workdir, LODO_FILE), summary)
  return summary


def format_aggregate(agg: dict) -> str:
  """One line per split: 'target  F1-micro 0.712 +- 0.031  F1-macro 0.655 +- 0.040 (n=2)'."""
  lines = []
  for split, scores in agg.items():
    parts = [f"{s.replace('f1_', 'F1-')} {v['mean']:.4f} +- {v['std']:.4f}" for s, v in scores.items()]
    lines.append(f"{split:7s} " + "  ".join(parts) + f"  (n={next(iter(scores.values()))['n']})")
  return "\n".join(lines)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The exact config of a finished run (its config.json)."""
  return checkpoint.load_config(workdir)


def run_comparison(algorithms: Sequence[str], preset: str, workdir: str, *, folds: Sequence[int] | None = None,
                   overrides: Sequence[str] = (), train_fn: TrainFn | None = None) -> dict[str, dict[int, str]]:
  """Cross-validates configs/<alg>.py:<preset> (plus `overrides`) for each algorithm in `workdir/<alg>`.

  Returns:
    {algorithm: {fold: finished run directory}}, the input of wbcdg_jax.report.write_comparison.
  """
  if len(set(algorithms)) != len(algorithms):
    raise ValueError(f"--algorithms={list(algorithms)} names an algorithm twice")
  runs = {}
  for name in algorithms:
    config = apply_overrides(load_algorithm_config(name, preset), overrides)
    summary = run_crossval(config, os.path.join(workdir, name), folds=folds, train_fn=train_fn)
    runs[name] = {int(k): v for k, v in summary["runs"].items()}
  return runs
