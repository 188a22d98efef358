"""DomainBed-style random hyperparameter search: seeded draws, one train.py command per run, best-draw selection.

Ranges (REFERENCE.md section 1); a draw samples only the fields its algorithm's loss terms read:

  all        optim.lr 10^U(-5,-3.5), model.dropout choice{0, 0.1, 0.5}
  coral      coral.weight (mmd_gamma) 10^U(-1,1)
  mmd        mmd.weight (mmd_gamma) 10^U(-1,1)
  dann       dann.weight (DomainBed's lambda: weight of the adversarial term) 10^U(-2,2)
  boda       boda.weight 10^U(-2,-0.5), boda.nu 10^U(-0.5,0), boda.temperature 10^U(-1,0.5),
             boda.momentum U(0,0.4), coral.weight (macro_weight) 10^U(-1,1),
             boda.start_step 100*choice{3,4,5,6}, boda.feat_update_freq int U(100,150)

The two BoDA schedule fields are in steps of the paper's 5001-step run; with a shorter schedule
(`config.train.steps` < SCHEDULE_MIN_STEPS, the quick/tiny presets) they would never switch BoDA on, so the
preset's values are kept and the draw records that.

Draw i of algorithm a uses numpy's PCG64 seeded with (sweep seed, i, crc32(a)): the same sweep seed always gives
the same draws, whatever algorithms are swept alongside and in whichever order.
"""

from __future__ import annotations

import math
import os
import shlex
import zlib
from typing import Sequence

import numpy as np

from wbcdg_jax import files, protocol
from wbcdg_jax.algorithms import terms_of

SCHEDULE_MIN_STEPS = 1000
SCHEDULE_FIELDS = ("boda.start_step", "boda.feat_update_freq")

# field: (kind, low, high) for log-uniform 'log10' and 'uniform'; (kind, choices) for 'choice'; 'int' inclusive.
COMMON = {"optim.lr": ("log10", -5.0, -3.5), "model.dropout": ("choice", (0.0, 0.1, 0.5))}
BY_TERM = {
    "coral": {"coral.weight": ("log10", -1.0, 1.0)},
    "mmd": {"mmd.weight": ("log10", -1.0, 1.0)},
    "dann": {"dann.weight": ("log10", -2.0, 2.0)},
    "boda": {"boda.weight": ("log10", -2.0, -0.5), "boda.nu": ("log10", -0.5, 0.0),
             "boda.temperature": ("log10", -1.0, 0.5), "boda.momentum": ("uniform", 0.0, 0.4),
             "coral.weight": ("log10", -1.0, 1.0), "boda.start_step": ("choice", (300, 400, 500, 600)),
             "boda.feat_update_freq": ("int", 100, 150)},
}


def search_space(algorithm: str, *, train_steps: int) -> dict:
  """The {field: spec} an algorithm's draw samples (see the module docstring)."""
  space = dict(COMMON)
  for term in sorted(terms_of(algorithm)):
    space.update(BY_TERM.get(term, {}))
  if train_steps < SCHEDULE_MIN_STEPS:
    for f in SCHEDULE_FIELDS:
      space.pop(f, None)
  return space


def _sample(rng: np.random.Generator, spec: tuple):
  kind = spec[0]
  if kind == "log10":
    return float(10.0 ** rng.uniform(spec[1], spec[2]))
  if kind == "uniform":
    return float(rng.uniform(spec[1], spec[2]))
  if kind == "choice":
    return spec[1][int(rng.integers(len(spec[1])))]
  if kind == "int":
    return int(rng.integers(spec[1], spec[2] + 1))
  raise ValueError(f"unknown search-space kind {kind!r}")


def draw(algorithm: str, index: int, *, sweep_seed: int, train_steps: int) -> dict:
  """Hyperparameter draw `index` of `algorithm`: {field: value}, a pure function of its arguments."""
  rng = np.random.default_rng([int(sweep_seed), int(index), zlib.crc32(algorithm.encode())])
  return {f: _sample(rng, spec) for f, spec in search_space(algorithm, train_steps=train_steps).items()}


def in_range(field: str, value, spec: tuple) -> bool:
  """Whether `value` lies in the range of `spec` (used by tests and as a guard)."""
  kind = spec[0]
  if kind == "log10":
    return spec[1] <= math.log10(value) <= spec[2]
  if kind == "uniform":
    return spec[1] <= value <= spec[2]
  if kind == "choice":
    return value in spec[1]
  return isinstance(value, int) and spec[1] <= value <= spec[2]


def format_value(value) -> str:
  """Text a config flag parses back to exactly the same value (repr round-trips floats)."""
  return repr(float(value)) if isinstance(value, float) else str(value)


def run_overrides(hparams: dict, *, seed: int, fold: int, extra: Sequence[str] = ()) -> list[str]:
  """`section.field=value` strings of one run: extra overrides first, then the draw, seed and fold."""
  items = list(extra) + [f"{k}={format_value(v)}" for k, v in hparams.items()]
  return items + [f"seed={seed}", f"data.fold={fold}"]


def command(config_arg: str, overrides: Sequence[str], workdir: str, python: str = "python") -> str:
  """`python launch/train.py --config=<config_arg> --config.x=y ... --workdir=<workdir>`, shell-quoted."""
  parts = [python, "launch/train.py", f"--config={config_arg}"]
  parts += [f"--config.{o}" for o in overrides] + [f"--workdir={workdir}"]
  return " ".join(shlex.quote(p) for p in parts)


def run_dir(workdir: str, algorithm: str, index: int, seed: int, fold: int) -> str:
  return os.path.join(workdir, algorithm, f"draw_{index:02d}", f"seed_{seed}", f"fold_{fold}")


def plan(algorithms: Sequence[str], *, preset: str, num_draws: int, seeds: Sequence[int],
         folds: Sequence[int] | None, workdir: str, sweep_seed: int = 0, extra: Sequence[str] = ()) -> list[dict]:
  """Every run of the sweep, in a fixed order (algorithm, draw, seed, fold).

  Returns:
    list of {'algorithm', 'draw', 'seed', 'fold', 'hparams', 'overrides', 'workdir', 'command', 'config'}.
  """
  runs = []
  for alg in algorithms:
    base = protocol.apply_overrides(protocol.load_algorithm_config(alg, preset), extra)
    for i in range(num_draws):
      hp = draw(alg, i, sweep_seed=sweep_seed, train_steps=int(base.train.steps))
      for seed in seeds:
        for fold in protocol.fold_list(base, folds):
          overrides = run_overrides(hp, seed=seed, fold=fold, extra=extra)
          wd = run_dir(workdir, alg, i, seed, fold)
          runs.append({"algorithm": alg, "draw": i, "seed": int(seed), "fold": int(fold), "hparams": hp,
                       "overrides": overrides, "workdir": wd,
                       "command": command(f"configs/{alg}.py:{preset}", overrides, wd),
                       "config": protocol.apply_overrides(protocol.load_algorithm_config(alg, preset), overrides)})
  return runs


def write_commands(runs: Sequence[dict], path: str) -> None:
  """commands.txt: one train.py command per line (a cluster job array runs line $SLURM_ARRAY_TASK_ID)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with files.atomic_open(path) as f:
    f.write("".join(r["command"] + "\n" for r in runs))


def select_best(runs: Sequence[dict]) -> dict:
  """Training-domain validation: per algorithm, the draw with the best mean source-val F1-macro.

  Only draws whose runs all finished compete. Returns {algorithm: {'draw', 'hparams', 'score', 'runs': {id: dir},
  'candidates': {draw: mean val F1-macro}}}; algorithms with no finished draw are left out.
  """
  by_alg: dict = {}
  for r in runs:
    by_alg.setdefault(r["algorithm"], {}).setdefault(r["draw"], []).append(r)
  best = {}
  for alg, draws in by_alg.items():
    scores = {}
    for i, rs in draws.items():
      if all(protocol.is_finished(r["workdir"]) for r in rs):
        scores[i] = float(np.mean([protocol.load_metrics(r["workdir"])["val"]["f1_macro"] for r in rs]))
    if not scores:
      continue
    i = max(scores, key=lambda k: (scores[k], -k))  # ties: the earlier draw
    rs = draws[i]
    best[alg] = {"draw": i, "hparams": rs[0]["hparams"], "score": scores[i], "candidates": scores,
                 "runs": {f"seed{r['seed']}_fold{r['fold']}": r["workdir"] for r in rs}}
  return best


def run_local(runs: Sequence[dict], train_fn: protocol.TrainFn | None = None) -> int:
  """Trains the runs one after another in this process, skipping finished ones; returns how many were trained."""
  import tqdm  # noqa: PLC0415  (only local execution shows a bar)
  trained = 0
  for r in tqdm.tqdm(runs, desc="sweep", unit="run"):
    if protocol.is_finished(r["workdir"]):
      continue
    protocol.run_or_skip(r["config"], r["workdir"], train_fn)
    trained += 1
  return trained


def write_summary(runs: Sequence[dict], workdir: str, *, distribution: bool = True) -> dict:
  """Selects each algorithm's best draw and writes sweep.json plus the comparison tables in <workdir>/tables."""
  from wbcdg_jax import report  # noqa: PLC0415  (matplotlib only when tables are made)
  best = select_best(runs)
  finished = sum(protocol.is_finished(r["workdir"]) for r in runs)
  summary = {"num_runs": len(runs), "finished": finished, "best": best,
             "runs": [{k: v for k, v in r.items() if k != "config"} for r in runs]}
  if best:
    labels = {alg: {rid: d for rid, d in b["runs"].items()} for alg, b in best.items()}
    report.write_comparison(labels, os.path.join(workdir, "tables"), distribution=distribution)
  files.write_json(os.path.join(workdir, "sweep.json"), summary)
  return summary
