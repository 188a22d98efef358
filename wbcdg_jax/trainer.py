"""The training loop: one readable function per stage, driven only by the config.

`train_and_evaluate(config, workdir)` trains (stage 1, and for "Ours+" the decoupled stage 2), selects the model by
source-validation F1-macro, evaluates it on the source validation split and on the unseen target domain, and
writes `metrics.json`. Every `log_every` steps a JSON line goes to `log.jsonl`; a run restarted with the same
command resumes from its latest checkpoint (state, data-iterator position and the step counter that seeds every
random draw).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipelines import pipeline
from wbcdg_jax import checkpoint, files, losses, metrics, multihost, sharding
from wbcdg_jax.algorithms import terms_of
from wbcdg_jax.classes import CLASS_NAMES, NUM_CLASSES
from wbcdg_jax.config_validation import boda_shrinkage, validate_config, validate_data
from wbcdg_jax.experiment import ExperimentData, load_experiment_data
from wbcdg_jax.stage import build_stage
from wbcdg_jax.train_step import tree_all_finite
from wbcdg_jax.train_state import TrainState, count_pairs

METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"


class NonFiniteLossError(RuntimeError):
  """A loss or gradient was NaN or infinite and config.train.on_nonfinite is 'stop', or the parameters are."""


_all_finite = jax.jit(tree_all_finite)


def _check_params_before_keeping(state: TrainState, done: int, ckpts) -> None:
  """Refuses to checkpoint, or offer as the best model, parameters that are not finite (an update overflowed
  them: with train.check_updated_params=False the step that did it is not dropped, only the next one is)."""
  if not bool(jax.device_get(_all_finite((state.params, state.disc_params)))):
    last = ckpts.latest_step()
    raise NonFiniteLossError(
        f"the parameters are not finite after step {done} (an update overflowed them; "
        f"config.train.check_updated_params=True drops such updates); not kept. Last good checkpoint: "
        + (f"step {last} in {ckpts.manager.directory}" if last is not None else "none yet"))


def _is_main() -> bool:
  return jax.process_index() == 0


# ----------------------------------------------------------------------------------------------------- evaluation


EVAL_READ_AHEAD = 2  # evaluation batches read and placed on the devices ahead of the forward pass, by a thread
EVAL_READ_THREADS = 4  # configs/base.py's data.num_threads: threads reading evaluation batches, a batch each
EVAL_IN_FLIGHT = 4  # refresh batches dispatched before the host waits for the oldest (bounds their device memory)


def read_ahead(threads: int) -> int:
  """grain's read-ahead for `threads` reading threads: it reads at most that many batches at once, so no fewer
  than the threads (and 4, as before data.num_threads existed)."""
  return max(4, threads)


def eval_host_batches(domain, indices: np.ndarray, *, batch_size: int, domain_index: int = 0,
                      read_threads: int = EVAL_READ_THREADS):
  """This process's padded evaluation batches of `indices` in host memory, read by `read_threads` threads (each
  reads whole batches, so as many batches are read at once). Returns (iterator, number of batches)."""
  return pipeline.make_eval_iterator(domain, indices, batch_size=batch_size, domain_index=domain_index,
                                     process_index=jax.process_index(), process_count=jax.process_count(),
                                     num_threads=read_threads, prefetch=read_ahead(read_threads))


def _eval_batches(domain, indices: np.ndarray, *, batch_size: int, mesh, domain_index: int = 0,
                  read_threads: int = EVAL_READ_THREADS):
  """`eval_host_batches`, placed on the mesh EVAL_READ_AHEAD batches ahead by another thread
  (`sharding.device_batches`). Returns (iterator, number of batches); close the iterator when done."""
  host, num_batches = eval_host_batches(domain, indices, batch_size=batch_size, domain_index=domain_index,
                                        read_threads=read_threads)
  return iter(sharding.device_batches(host, mesh, prefetch=EVAL_READ_AHEAD)), num_batches


def predict_split(eval_fn, variables: dict, domain, indices: np.ndarray, *, batch_size: int, mesh,
                  desc: str = "eval", read_threads: int = EVAL_READ_THREADS) -> tuple[np.ndarray, np.ndarray]:
  """Runs the eval forward over `indices` of `domain`.

  Reading, host-to-device copies and the forward passes overlap: a thread reads and places the batches ahead, and
  a batch's outputs are fetched only once the next batch's forward pass is queued, so the devices never wait for
  the host to copy results back.

  Returns:
    (labels int [N], logits float32 [N, C]) in the order of `indices`, gathered from every process.
  """
  it, num_batches = _eval_batches(domain, indices, batch_size=batch_size, mesh=mesh, read_threads=read_threads)
  labels, logits, pending = [], [], None

  def collect(outputs):
    mask, lab, out = multihost_utils.process_allgather(outputs, tiled=True)
    mask = np.asarray(mask)
    labels.append(np.asarray(lab)[mask])
    logits.append(np.asarray(out)[mask])

  try:
    for batch in tqdm.tqdm(it, total=num_batches, desc=desc, leave=False, disable=not _is_main()):
      _, out = eval_fn(variables["params"], variables["batch_stats"], batch["image"])
      if pending is not None:
        collect(pending)
      pending = (batch["mask"], batch["label"], out)
    if pending is not None:
      collect(pending)
  finally:
    it.close()
  return np.concatenate(labels), np.concatenate(logits)


def evaluate_sources(eval_fn, variables: dict, data: ExperimentData, *, batch_size: int, mesh,
                     read_threads: int = EVAL_READ_THREADS) -> dict:
  """Scores the pooled source validation split ('val') and each source domain's validation split."""
  per_domain, y_all, p_all = {}, [], []
  for domain, idx in zip(data.sources, data.val_idx):
    y, logits = predict_split(eval_fn, variables, domain, idx, batch_size=batch_size, mesh=mesh,
                              desc=f"val {domain.name}", read_threads=read_threads)
    pred = logits.argmax(-1)
    per_domain[domain.name] = metrics.classification_report(y, pred, CLASS_NAMES)
    y_all.append(y)
    p_all.append(pred)
  pooled = metrics.classification_report(np.concatenate(y_all), np.concatenate(p_all), CLASS_NAMES)
  return {"val": pooled, "val_per_domain": per_domain}


def evaluate_target(eval_fn, variables: dict, data: ExperimentData, *, batch_size: int, mesh,
                    workdir: str | None = None, read_threads: int = EVAL_READ_THREADS) -> dict:
  """Scores the unseen target's test split; also saves its predictions (for tables made later)."""
  if data.target is None:
    return {}
  y, logits = predict_split(eval_fn, variables, data.target, data.target_idx, batch_size=batch_size, mesh=mesh,
                            desc=f"test {data.target.name}", read_threads=read_threads)
  if workdir and _is_main():
    with files.atomic_open(os.path.join(workdir, "target_predictions.npz"), "wb") as f:
      np.savez(f, labels=y, logits=logits, indices=data.target_idx,
               paths=np.asarray(data.target.paths)[data.target_idx])
  return {"target": metrics.classification_report(y, logits.argmax(-1), CLASS_NAMES)}


# ------------------------------------------------------------------------------------------------ BoDA statistics


_add_moments = jax.jit(losses.add_moments, donate_argnums=0)


def refresh_boda(state: TrainState, eval_fn, moments_fn, data: ExperimentData, *, config, mesh) -> TrainState:
  """Recomputes per-(domain, class) feature statistics by an eval-mode pass over every source training split.

  The features stay on the devices: each batch's per-pair moments (`moments_fn`) are summed there, and only the
  sums come back, once. Reading, host-to-device copies and the forward passes overlap (a thread reads and places
  the batches ahead; nothing waits for a batch's result), so the pass runs at the slower of the reading and the
  forward pass rather than at their sum: on one H100 the serial pass ran at 1,628 images/s where its forward
  alone ran at 25,999 (session 13). Once more than EVAL_IN_FLIGHT batches are queued, the host waits for the
  oldest one's features (its images are then freed), which bounds the device memory that queued batches hold.
  """
  params, batch_stats = state.params, state.batch_stats
  total, queued = None, collections.deque()
  for d, (domain, idx) in enumerate(zip(data.sources, data.train_idx)):
    it, num_batches = _eval_batches(domain, idx, batch_size=int(config.data.eval_batch), mesh=mesh, domain_index=d,
                                    read_threads=int(config.data.num_threads))
    try:
      for batch in tqdm.tqdm(it, total=num_batches, desc=f"BoDA stats {domain.name}", leave=False,
                             disable=not _is_main()):
        z, _ = eval_fn(params, batch_stats, batch["image"])
        moments = moments_fn(z, batch["label"], batch["domain"], batch["mask"])
        queued.append(z)  # not the moments: the first batch's are the running total, donated to the next add
        total = moments if total is None else _add_moments(total, moments)
        if len(queued) > EVAL_IN_FLIGHT:
          queued.popleft().block_until_ready()
    finally:
      it.close()
  stats = losses.update_boda_stats(state.boda, jax.device_get(total), momentum=float(config.boda.momentum),
                                   shrinkage=boda_shrinkage(config.boda.shrinkage))
  return state.replace(boda=sharding.replicate(stats, mesh))


def boda_refresh_due(step: int, config) -> bool:
  """Refresh at every multiple of feat_update_freq from the last one before boda.start_step on.

  Earlier refreshes (the authors start at step 0) only feed the EMA before the term is switched on; they are
  skipped to save full passes over the training data.
  """
  freq, start = int(config.boda.feat_update_freq), int(config.boda.start_step)
  return step % freq == 0 and step + freq > start


# ------------------------------------------------------------------------------------------------------ a stage


def run_stage(config: ml_collections.ConfigDict, workdir: str, data: ExperimentData, *, stage: int = 1,
              stage1_dir: str | None = None) -> dict:
  """Trains one stage in `workdir` (resuming if it holds checkpoints) and returns the selected model's scores."""
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  counts = count_pairs(data.train_labels(), NUM_CLASSES)
  st = build_stage(config, mesh=mesh, counts=counts, stage=stage, stage1_dir=stage1_dir)
  steps = int(config.train.steps if stage == 1 else config.decoupled.steps)
  per_domain = int(config.data.per_domain_batch)
  sharding.check_global_batch(int(config.data.eval_batch), mesh, "config.data.eval_batch")

  ckpts = checkpoint.StateCheckpoints(os.path.join(workdir, "checkpoints"), keep=int(config.train.keep_checkpoints))
  start = ckpts.latest_step()
  reader, restore_reader = _train_reader(config, ckpts, start)
  host_batches = pipeline.make_train_dataset(
      data.sources, data.train_idx, per_domain_batch=per_domain, seed=int(config.seed),
      sampling="class_balanced" if st.spec.head_only else "uniform", num_workers=reader["num_workers"],
      num_threads=int(config.data.num_threads), prefetch=read_ahead(int(config.data.num_threads)),
      process_index=jax.process_index(), process_count=jax.process_count(), start_step=reader["origin"])
  train_iter = iter(sharding.device_batches(host_batches, mesh, prefetch=int(config.data.prefetch)))
  try:
    return _train_loop(config, workdir, data, st, train_iter, ckpts=ckpts, start=start, reader=reader,
                       restore_reader=restore_reader, mesh=mesh, steps=steps, stage=stage)
  finally:
    train_iter.close()  # stops the prefetch thread and grain's worker processes


def _train_reader(config: ml_collections.ConfigDict, ckpts: checkpoint.StateCheckpoints,
                  start: int | None) -> tuple[dict, bool]:
  """The training reader to build, {'num_workers', 'origin': its first step}, and whether to restore the grain
  state saved at checkpoint `start` into it.

  grain's saved state has a layout per number of worker processes, and counts batches from the reader's origin:
  a run resumed with another config.data.num_workers (a speed setting) cannot restore it, and starts its reader
  at the checkpoint's step instead, which gives the same batches (they are a function of the step alone).
  """
  reader = {"num_workers": int(config.data.num_workers), "origin": 0}
  if start is None:
    return reader, False
  saved = ckpts.reader_of(start)
  if saved is None:  # saved before checkpoints named their reader: one from step 0, as this run's
    return reader, True
  if int(saved.get("num_workers", -1)) == reader["num_workers"]:
    return {**reader, "origin": int(saved.get("origin", 0))}, True
  logging.warning("checkpoint %d was read by %s grain worker processes, this run reads with config.data.num_workers"
                  "=%d: reading restarts at step %d from the step alone (same batches), not from grain's saved "
                  "state", start, saved.get("num_workers"), reader["num_workers"], start)
  return {**reader, "origin": start}, False


def _train_loop(config: ml_collections.ConfigDict, workdir: str, data: ExperimentData, st, train_iter, *,
                ckpts: checkpoint.StateCheckpoints, start: int | None, reader: dict, restore_reader: bool,
                mesh: jax.sharding.Mesh, steps: int, stage: int) -> dict:
  """`run_stage`'s loop: resumes from checkpoint `start` (None: none yet; `restore_reader`: with the grain state
  saved there, into `train_iter`), runs to `steps` on `train_iter`'s device batches, then scores the selected model."""
  state, spec = st.state, st.spec
  per_domain = int(config.data.per_domain_batch)
  best = checkpoint.BestModel(os.path.join(workdir, "best"))
  if start is not None:
    restored = ckpts.restore(start, state, train_iter if restore_reader else None)
    state = jax.device_put(restored, st.state_sharding)  # the step's layouts
    logging.info("resumed %s from step %d", workdir, start)
  start = int(start or 0)

  step_fn, eval_fn, moments_fn = st.train_step, st.eval_fn, st.moments_fn
  eval_args = dict(batch_size=int(config.data.eval_batch), mesh=mesh, read_threads=int(config.data.num_threads))
  log_path = os.path.join(workdir, LOG_FILE)
  _truncate_log(log_path, start)
  pending: list[tuple[int, dict]] = []
  t_window = time.perf_counter()
  bar = tqdm.tqdm(total=steps, initial=start, desc=f"stage {stage} {config.algorithm}", disable=not _is_main())
  try:
    for step in range(start, steps):
      if spec.boda_weight and boda_refresh_due(step, config):
        state = refresh_boda(state, eval_fn, moments_fn, data, config=config, mesh=mesh)
      batch = next(train_iter)
      state, step_metrics = step_fn(state, batch)
      pending.append((step, step_metrics))
      done = step + 1
      last = done == steps
      if done % int(config.train.log_every) == 0 or last:
        row = _flush_log(pending, log_path, ckpts, config, t_window, per_domain * data.num_domains)
        bar.set_postfix(loss=f"{row['total']:.3f}", acc=f"{row['accuracy']:.2f}")
        pending, t_window = [], time.perf_counter()
      evaluate_now = done % int(config.train.eval_every) == 0 or last
      save_now = done % int(config.train.checkpoint_every) == 0 or last
      if evaluate_now or save_now:
        if config.train.on_nonfinite == "stop":  # the steps since the last log row, before anything is kept
          _stop_on_nonfinite(pending, jax.device_get([m for _, m in pending]), ckpts)
        _check_params_before_keeping(state, done, ckpts)
      if evaluate_now:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        scores = evaluate_sources(eval_fn, variables, data, **eval_args)
        summary = {"step": done, "val_f1_macro": scores["val"]["f1_macro"],
                   "val_f1_micro": scores["val"]["f1_micro"], "val_accuracy": scores["val"]["accuracy"]}
        best.offer(done, jax.device_get(variables), summary)
        _append_json(log_path, {"eval": summary})
      if save_now:
        ckpts.save(done, state, train_iter, reader=reader)
      bar.update(1)
  finally:  # stopped by an error too, the checkpoint being written completes: the one the error names as last good
    bar.close()
    ckpts.wait()
    ckpts.close()

  selected = {k: np.asarray(v) for k, v in best.best_metrics().items()}
  variables = best.restore()
  best.close()
  scores = evaluate_sources(eval_fn, variables, data, **eval_args)
  scores.update(evaluate_target(eval_fn, variables, data, workdir=workdir, **eval_args))
  scores["selected_step"] = int(selected["step"])
  scores["skipped_updates"] = int(jax.device_get(state.skipped))
  return scores


def _flush_log(pending, log_path, ckpts, config, t_window: float, global_batch: int) -> dict:
  """Writes the mean metrics of the window as one JSON line and enforces the non-finite policy."""
  host = jax.device_get([m for _, m in pending])  # waits for the window's last step
  seconds = time.perf_counter() - t_window
  if config.train.on_nonfinite == "stop":
    _stop_on_nonfinite(pending, host, ckpts)
  row = {"step": pending[-1][0] + 1}
  row.update({k: float(np.mean([m[k] for m in host])) for k in host[0]})
  row["images_per_s"] = len(pending) * global_batch / max(seconds, 1e-9)
  _append_json(log_path, row)
  return row


def _stop_on_nonfinite(pending, host, ckpts) -> None:
  """config.train.on_nonfinite='stop': raises at the first of the `pending` steps (their metrics `host`, fetched)
  whose loss or gradient was not finite. Checked at every log row and before every checkpoint and evaluation, so
  that no state after such a step is kept: a rerun of the command would resume past it."""
  for (step, _), m in zip(pending, host):
    if m["finite"] < 1:
      terms = {k: float(v) for k, v in m.items()}
      raise NonFiniteLossError(
          f"non-finite loss or gradient at step {step}: {terms}; the update was not applied. Last good checkpoint: "
          f"step {ckpts.latest_step()} in {ckpts.manager.directory} (set config.train.on_nonfinite='skip' "
          f"to skip such updates)")


def _truncate_log(path: str, step: int) -> None:
  """Drops the log rows of steps after `step`: a killed run logged steps past its last checkpoint, and the
  resumed run logs them again (with the same values), so the log keeps one row per step."""
  if not _is_main() or not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut by the kill
      continue
    if line.endswith("\n") and row.get("step", row.get("eval", {}).get("step", 0)) <= step:
      keep.append(line)
  if len(keep) != len(lines):
    with files.atomic_open(path) as f:  # a kill now leaves either log whole
      f.writelines(keep)


def _append_json(path: str, row: dict) -> None:
  if _is_main():
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------------- the whole


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured algorithm end to end and writes `metrics.json` in `workdir`."""
  validate_config(config)
  changes = checkpoint.config_changes(workdir, config)
  if changes and _is_main():  # e.g. a sweep's command rerun in the wrong folder, or a deliberate change of speed
    logging.warning("%s holds a run made with another config; it resumes from that run's checkpoints with the new "
                    "values (config.json is rewritten): %s", workdir, "; ".join(changes))
  checkpoint.save_config(workdir, config)
  with multihost.main_process_first("load_experiment_data"):  # process 0 alone builds missing synthetic domains
    data = load_experiment_data(config)
  validate_data(config, data)  # the model's class count vs each stored domain's, before anything compiles
  t0 = time.perf_counter()
  stage1_dir = config.init.stage1_workdir or workdir
  if not config.init.stage1_workdir:
    result = run_stage(config, workdir, data, stage=1)
  if "decoupled" in terms_of(config.algorithm):
    stage1 = result if not config.init.stage1_workdir else None
    result = run_stage(config, os.path.join(workdir, "stage2"), data, stage=2, stage1_dir=stage1_dir)
    result["stage1"] = stage1
  result.update({"algorithm": config.algorithm, "sources": list(config.data.sources),
                 "target_domain": config.data.target, "fold": int(config.data.fold), "seed": int(config.seed),
                 "train_seconds": time.perf_counter() - t0, "devices": jax.device_count(),
                 "processes": jax.process_count(),
                 "platform": jax.devices()[0].platform})
  if _is_main():
    files.write_json(os.path.join(workdir, METRICS_FILE), result)  # last: it marks the run finished
  return result
