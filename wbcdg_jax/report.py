"""Tables and figures comparing algorithms over cross-validation folds, recomputed from saved predictions.

Everything is written by `write_comparison(runs, out_dir)` where `runs[algorithm][fold]` is a finished trainer
work directory:

  table1_source_val.md/.csv      F1-micro, F1-macro (mean +- std over folds) on the pooled source validation split
  table2_unseen_domain.md/.csv   the same on the unseen target domain (recomputed from target_predictions.npz)
  per_class_unseen.csv           precision / recall / F1 / support per class per algorithm, folds pooled
  confusion_<alg>.png            row-normalised confusion matrix on the unseen domain, folds pooled
  confusion_<a>_vs_<b>.png       two of them side by side
  class_distribution.png         images per class per domain and split (train / val / target-test)
  results.json                   every number above plus each run's exact config (its config.json)

Scores come from scikit-learn (wbcdg_jax/metrics.py). Target scores are recomputed from the saved predictions and
must equal the ones the trainer wrote in metrics.json (PredictionMismatchError otherwise). F1-macro averages the
classes present in the evaluated labels only; the present/absent classes are listed next to every number.
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wbcdg_jax import files, metrics, protocol  # noqa: E402
from wbcdg_jax.classes import CLASS_NAMES  # noqa: E402

PREDICTIONS_FILE = "target_predictions.npz"
SCORE_LABELS = {"f1_micro": "F1-micro", "f1_macro": "F1-macro"}
TOLERANCE = 1e-6  # recomputed vs stored scores: the same sklearn call on the same arrays; allow JSON rounding


class PredictionMismatchError(RuntimeError):
  """Scores recomputed from target_predictions.npz differ from those the trainer stored in metrics.json."""


# ------------------------------------------------------------------------------------------------ predictions


def load_predictions(run_dir: str, algorithm: str) -> dict:
  """Loads a run's saved target predictions.

  Returns:
    dict(labels int64 [N], logits float32 [N, C], pred int64 [N] (argmax), indices int64 [N], paths str [N]).
  """
  path = os.path.join(protocol.predictions_dir(run_dir, algorithm), PREDICTIONS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: the run has no target domain or has not finished")
  with np.load(path) as z:
    out = {k: z[k] for k in z.files}
  out["labels"] = out["labels"].astype(np.int64)
  out["pred"] = out["logits"].argmax(-1).astype(np.int64)
  return out


def check_target_scores(run_dir: str, algorithm: str, stored: dict) -> dict:
  """Recomputes the target report from saved predictions and checks it against metrics.json's 'target'.

  Raises:
    PredictionMismatchError naming the run and the score that differs.
  """
  p = load_predictions(run_dir, algorithm)
  report = metrics.classification_report(p["labels"], p["pred"], CLASS_NAMES)
  for key in ("n", "accuracy", "f1_micro", "f1_macro"):
    if abs(float(report[key]) - float(stored[key])) > TOLERANCE:
      raise PredictionMismatchError(
          f"{run_dir}: target {key} recomputed from {PREDICTIONS_FILE} is {report[key]} but metrics.json says "
          f"{stored[key]}")
  if report["present_classes"] != stored["present_classes"]:
    raise PredictionMismatchError(f"{run_dir}: present classes differ between {PREDICTIONS_FILE} and metrics.json")
  return report


# ----------------------------------------------------------------------------------------------------- tables


def collect(runs: dict[str, dict[int, str]]) -> dict:
  """Reads every run's metrics (and, for the target, recomputes them from predictions).

  Args:
    runs: {algorithm label: {fold (or run id): finished work directory}}.

  Returns:
    {label: {'algorithm', 'runs': {id: {'dir', 'val', 'target', 'config'}}, 'aggregate', 'pooled_target'}}.
  """
  out = {}
  for label, by_fold in runs.items():
    entries, results = {}, []
    ys, ps = [], []
    for fold, run_dir in sorted(by_fold.items()):
      m = protocol.load_metrics(run_dir)
      algorithm = m.get("algorithm", label)
      entry = {"dir": run_dir, "val": _summary(m["val"]), "config": protocol.load_run_config(run_dir).to_dict(),
               "selected_step": m.get("selected_step")}
      if "target" in m:
        recomputed = check_target_scores(run_dir, algorithm, m["target"])
        m = dict(m, target=recomputed)
        entry["target"] = _summary(recomputed)
        p = load_predictions(run_dir, algorithm)
        ys.append(p["labels"])
        ps.append(p["pred"])
      entries[str(fold)] = entry
      results.append(m)
    pooled = (metrics.classification_report(np.concatenate(ys), np.concatenate(ps), CLASS_NAMES)
              if ys and len(ys) == len(results) else None)
    out[label] = {"algorithm": results[0].get("algorithm", label) if results else label, "runs": entries,
                  "aggregate": protocol.aggregate(results), "pooled_target": pooled}
  return out


def _summary(report: dict) -> dict:
  keys = ("n", "accuracy", "f1_micro", "f1_macro", "present_classes", "absent_classes", "per_class")
  return {k: report[k] for k in keys}


def table_rows(collected: dict, split: str) -> list[dict]:
  """One row per algorithm: {'algorithm', 'n_runs', <score>_mean, <score>_std} for F1-micro and F1-macro."""
  rows = []
  for label, c in collected.items():
    agg = c["aggregate"].get(split)
    if agg is None:
      continue
    row = {"algorithm": label, "n_runs": agg["f1_macro"]["n"]}
    for s in protocol.SCORES:
      row[f"{s}_mean"], row[f"{s}_std"] = agg[s]["mean"], agg[s]["std"]
    rows.append(row)
  return rows


def write_table(rows: list[dict], path_stem: str, title: str) -> None:
  """Writes `<stem>.csv` (raw numbers) and `<stem>.md` (mean +- std, best mean per column in bold)."""
  fields = ["algorithm", "n_runs"] + [f"{s}_{k}" for s in protocol.SCORES for k in ("mean", "std")]
  with open(path_stem + ".csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  best = {s: max((r[f"{s}_mean"] for r in rows), default=None) for s in protocol.SCORES}
  lines = [f"### {title}", "", "| algorithm | runs | " + " | ".join(SCORE_LABELS[s] for s in protocol.SCORES) + " |",
           "| --- | --- |" + " --- |" * len(protocol.SCORES)]
  for r in rows:
    cells = []
    for s in protocol.SCORES:
      text = f"{r[f'{s}_mean']:.4f} ± {r[f'{s}_std']:.4f}"
      cells.append(f"**{text}**" if best[s] is not None and np.isclose(r[f"{s}_mean"], best[s]) else text)
    lines.append(f"| {r['algorithm']} | {r['n_runs']} | " + " | ".join(cells) + " |")
  lines += ["", "Mean ± standard deviation (population) over runs; best mean per column in bold. F1-macro averages "
            "the classes present in the evaluated labels only."]
  with files.atomic_open(path_stem + ".md") as f:
    f.write("\n".join(lines) + "\n")


def write_per_class(collected: dict, path: str) -> None:
  """per_class_unseen.csv: one row per (algorithm, class) of the 13, folds pooled; absent classes say so."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["algorithm", "class", "present", "precision", "recall", "f1", "support"])
    for label, c in collected.items():
      pooled = c["pooled_target"]
      if pooled is None:
        continue
      for name in CLASS_NAMES:
        pc = pooled["per_class"].get(name)
        if pc is None:  # not in the unseen domain's labels: no defined recall/F1, not a zero
          w.writerow([label, name, False, "", "", "", 0])
        else:
          w.writerow([label, name, True, f"{pc['precision']:.6f}", f"{pc['recall']:.6f}", f"{pc['f1']:.6f}",
                      pc["support"]])


# ----------------------------------------------------------------------------------------------------- figures


def row_normalise(confusion: np.ndarray) -> np.ndarray:
  """Divides each row (true class) by its count; rows of absent classes stay NaN (drawn blank, not as zeros)."""
  c = np.asarray(confusion, np.float64)
  totals = c.sum(axis=1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(totals > 0, c / np.where(totals > 0, totals, 1), np.nan)


def _draw_confusion(ax, confusion: np.ndarray, title: str) -> None:
  norm = row_normalise(confusion)
  ax.imshow(np.ma.masked_invalid(norm), vmin=0, vmax=1, cmap="Blues")
  n = len(CLASS_NAMES)
  ax.set_xticks(range(n), CLASS_NAMES, rotation=90, fontsize=7)
  ax.set_yticks(range(n), CLASS_NAMES, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)
  for i in range(n):
    for j in range(n):
      if np.isfinite(norm[i, j]) and norm[i, j] >= 0.005:
        ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=5,
                color="white" if norm[i, j] > 0.5 else "black")


def plot_confusion(confusion: np.ndarray, title: str, path: str) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 6))
  _draw_confusion(ax, confusion, title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_confusion_pair(a: tuple[str, np.ndarray], b: tuple[str, np.ndarray], path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(12.5, 6))
  for ax, (title, conf) in zip(axes, (a, b)):
    _draw_confusion(ax, conf, title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def class_distribution(config) -> dict:
  """Counts per class of every domain and split of one fold's experiment.

  Args:
    config: a run's config (its config.json); opens the stored domains named by it.

  Returns:
    {domain: {split: int [C] counts}} with splits 'train', 'val' for sources and 'target-test' for the target.
  """
  from wbcdg_jax.experiment import load_experiment_data  # opens datasets; imported only when figures are drawn
  data = load_experiment_data(config)
  c = len(CLASS_NAMES)
  out = {}
  for d, tr, va in zip(data.sources, data.train_idx, data.val_idx):
    out[d.name] = {"train": np.bincount(d.labels[tr], minlength=c).tolist(),
                   "val": np.bincount(d.labels[va], minlength=c).tolist()}
  if data.target is not None:
    out[data.target.name] = {"target-test": np.bincount(data.target.labels[data.target_idx], minlength=c).tolist()}
  return out


def plot_class_distribution(counts: dict, title: str, path: str) -> None:
  """Grouped bars (log scale) per class, one panel per domain, one bar per split."""
  domains = list(counts)
  fig, axes = plt.subplots(len(domains), 1, figsize=(10, 2.6 * len(domains)), squeeze=False)
  x = np.arange(len(CLASS_NAMES))
  for ax, dom in zip(axes[:, 0], domains):
    splits = counts[dom]
    width = 0.8 / len(splits)
    for i, (split, cnt) in enumerate(splits.items()):
      ax.bar(x + (i - (len(splits) - 1) / 2) * width, cnt, width, label=f"{split} (n={sum(cnt)})")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xticks(x, CLASS_NAMES, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("images")
    ax.set_title(dom, fontsize=9)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------------------------------- all


def write_comparison(runs: dict[str, dict[int, str]], out_dir: str, *, pair: Sequence[str] | None = None,
                     distribution: bool = True) -> dict:
  """Writes every table, figure and results.json of a comparison (see the module docstring).

  Args:
    runs: {algorithm label: {fold: finished work directory}}.
    out_dir: where the files go.
    pair: the two labels of the side-by-side confusion figure (default: first and last).
    distribution: draw class_distribution.png (opens the datasets of the first run's config).

  Returns:
    the results.json content.
  """
  os.makedirs(out_dir, exist_ok=True)
  collected = collect(runs)
  write_table(table_rows(collected, "val"), os.path.join(out_dir, "table1_source_val"),
              "Table 1: source domains, validation split (training-domain validation)")
  write_table(table_rows(collected, "target"), os.path.join(out_dir, "table2_unseen_domain"),
              "Table 2: unseen domain (target test split)")
  write_per_class(collected, os.path.join(out_dir, "per_class_unseen.csv"))
  labels = [l for l in collected if collected[l]["pooled_target"] is not None]
  for label in labels:
    plot_confusion(np.asarray(collected[label]["pooled_target"]["confusion"]),
                   f"{label}: unseen domain, folds pooled (row-normalised)",
                   os.path.join(out_dir, f"confusion_{label}.png"))
  if len(labels) >= 2:
    a, b = pair or (labels[0], labels[-1])
    for name in (a, b):
      if name not in labels:
        raise ValueError(f"confusion pair {name!r} is not one of the compared algorithms {labels}")
    plot_confusion_pair(*[(n, np.asarray(collected[n]["pooled_target"]["confusion"])) for n in (a, b)],
                        os.path.join(out_dir, f"confusion_{a}_vs_{b}.png"))
  results = {"class_names": list(CLASS_NAMES), "algorithms": collected}
  if distribution and runs:
    first = next(iter(runs.values()))
    dist = {}
    for fold, run_dir in sorted(first.items()):
      dist[str(fold)] = class_distribution(protocol.load_run_config(run_dir))
    results["class_distribution"] = dist
    fold0 = sorted(dist)[0]
    plot_class_distribution(dist[fold0], f"images per class (fold {fold0}; source train/val, target test)",
                            os.path.join(out_dir, "class_distribution.png"))
  files.write_json(os.path.join(out_dir, "results.json"), results)
  return results
