"""Input-pipeline and BoDA-refresh timing on synthetic domains stored as array_record by the real builders.

Pipeline rows, at one total batch:
  host read        grain reading batches (make_train_dataset, as the trainer calls it) into host memory;
  read + augment   the same, copied to the devices and augmented there (augment_batch, as in the step);
  step on device   the train step on a batch already on the devices (the upper bound the loop can reach);
  full loop        the trainer's loop: device batches from `sharding.device_batches` (read and placed ahead by a
                   thread, config.data.prefetch of them) -> step; and the same with the batches read and placed
                   by the loop's own thread (data.prefetch=0), as the trainer did before session 13.
The rows that read are timed once each grain worker process has made its first batch (`first_call_s` of the host
read: that start-up). Each other reader of `settings.alt_readers` (worker processes x threads) adds a host-read
and a full-loop row: worker processes hand each batch over through new shared memory, which costs more per batch
than reading it on 2 CPU cores; threads share the trainer's Python lock.
Refresh rows: the eval-mode forward on a device batch (the refresh's compute); then, at each reading-thread count
(config.data.num_threads), the refresh's reading alone (grain eval batches into host memory) and
`trainer.refresh_boda` itself (grain eval batches -> features -> per-pair moments -> new statistics) over every
source training split. The pass runs at the slower of its reading and its forward pass: the rows say which.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np

from data_pipelines import base_builder, pipeline
from wbcdg_jax import augment, sharding, trainer
from wbcdg_jax.bench.settings import Settings
from wbcdg_jax.bench.steps import BuiltStep, compiler_options, time_step, timed_windows
from wbcdg_jax.experiment import ExperimentData, load_experiment_data


def experiment_data(built: BuiltStep, data_dir: str) -> ExperimentData:
  """The built step's source domains (synthetic ones are generated into `data_dir` on first use)."""
  config = built.config.copy_and_resolve_references()
  config.data.data_dir = data_dir
  config.data.build_if_missing = True
  return load_experiment_data(config)


def _host_batches(built: BuiltStep, data: ExperimentData, settings: Settings, reader: tuple[int, int]):
  """The trainer's grain batches, read by `reader` = (worker processes, threads in each)."""
  workers, threads = reader
  return pipeline.make_train_dataset(
      data.sources, data.train_idx, per_domain_batch=int(built.config.data.per_domain_batch), seed=settings.seed,
      num_workers=workers, num_threads=threads, prefetch=max(int(settings.prefetch), trainer.read_ahead(threads)),
      process_index=jax.process_index(), process_count=jax.process_count())


def _device_batches(built: BuiltStep, data: ExperimentData, settings: Settings, reader: tuple[int, int],
                    prefetch: int | None = None):
  """The trainer's iterator: host batches placed on the mesh, `config.data.prefetch` of them ahead by a thread."""
  prefetch = int(built.config.data.prefetch) if prefetch is None else prefetch
  return iter(sharding.device_batches(_host_batches(built, data, settings, reader), built.mesh, prefetch=prefetch))


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def _started(it, workers: int):
  """`it` after one batch from each of its `workers` grain worker processes (one batch without workers): each
  worker makes every num_workers-th batch, so the first batch says only that worker 0 is up. Timed from the first
  batch, session 13's 12 workers were still starting inside the 40 timed batches (the full loop's first window:
  19.1 ms a step, the next two 13.9 and 12.8). Returns (it, seconds it took)."""
  t0 = time.perf_counter()
  for _ in range(max(1, workers)):
    next(it)
  return it, time.perf_counter() - t0


def _record_compression(data: ExperimentData) -> str:
  """How the source domains' record files store their records ('none', 'zstd'; several joined by '+'): a
  `--data_dir` built before session 16 holds zstd records, which cost the host ~5x more to read."""
  kinds = {base_builder.record_compression(f) for d in data.sources for f in base_builder.record_files(d.directory)}
  return "+".join(sorted(kinds))


def _row(name: str, built: BuiltStep, images: int, seconds: float, **extra) -> dict[str, Any]:
  return {"name": name, "batch": built.total_batch, "devices": built.num_devices, "images_per_s": images / seconds,
          "step_ms": 1e3 * seconds * built.total_batch / images, **extra}


def time_pipeline(built: BuiltStep, data: ExperimentData, settings: Settings) -> list[dict[str, Any]]:
  """The pipeline rows for `built`'s algorithm and total batch (ratios against the on-device step)."""
  n = int(settings.pipeline_steps)
  batch = built.total_batch
  reader = (int(settings.num_workers), int(settings.num_threads))
  rows = []

  def host_read(reader, label=""):
    it, start_s = _started(iter(_host_batches(built, data, settings, reader)), reader[0])
    t0 = time.perf_counter()
    for _ in range(n):
      next(it)
    seconds = time.perf_counter() - t0
    _close(it)
    return _row("host read (grain, array_record)" + label, built, n * batch, seconds, first_call_s=start_s,
                note=f"data.num_workers={reader[0]}, data.num_threads={reader[1]}; records stored with "
                     f"compression {_record_compression(data)!r}")

  def full_loop(reader, prefetch, label=""):
    it, _ = _started(_device_batches(built, data, settings, reader, prefetch=prefetch), reader[0])
    loop = time_step(built, settings, steps=n, batches=it)
    _close(it)
    loop["name"] = ("full loop (pipeline -> step)" if prefetch else "full loop, batches placed inline") + label
    loop["note"] = (f"data.prefetch={prefetch}: " + ("read and placed ahead by a thread" if prefetch else
                                                     "read and placed by the loop's thread"))
    return loop

  rows.append(host_read(reader))
  it, _ = _started(_device_batches(built, data, settings, reader), reader[0])
  options = augment.AugmentOptions.from_dict(built.config.augment.to_dict())
  key = jax.random.key(settings.seed)
  out_size = int(built.config.model.image_size)
  augment_fn = augment.augment_batch.lower(next(it)["image"], key, out_size=out_size,
                                           options=options).compile(compiler_options(settings))

  def read_and_augment(steps):
    out = None
    for _ in range(steps):
      out = augment_fn(next(it)["image"], key)
    return out

  timing = timed_windows(read_and_augment, warmup=1, steps=n, repeats=1)
  rows.append(_row("read + device augmentation", built, batch, timing["step_s"],
                   first_call_s=timing["first_call_s"]))
  _close(it)

  on_device = time_step(built, settings, steps=n)
  on_device["name"] = "step on device data"
  rows.append(on_device)

  prefetch = int(built.config.data.prefetch)
  rows.append(full_loop(reader, prefetch))
  if prefetch:  # the trainer's loop reads ahead on a thread: also time it without
    rows.append(full_loop(reader, 0))
  for other in settings.alt_reader_list:  # other ways to read: the host read alone and the trainer's loop
    label = f" [data.num_workers={other[0]}+data.num_threads={other[1]}]"
    rows += [host_read(other, label), full_loop(other, prefetch, label)]
  for row in rows:
    row["ratio"] = row["images_per_s"] / on_device["images_per_s"]
    row["ratio_to"] = "step on device"
  return rows


def _repeated_training_split(data: ExperimentData, images: int) -> tuple[ExperimentData, int]:
  """`data` with each source's training indices repeated k times, the least k (>= 1) for which they add up to
  `images`; returns (data, k)."""
  total = sum(len(i) for i in data.train_idx)
  repeats = max(1, -(-images // total)) if total else 1
  if repeats == 1:
    return data, 1
  return dataclasses.replace(data, train_idx=[np.tile(i, repeats) for i in data.train_idx]), repeats


def _eval_read_pass(data: ExperimentData, *, batch_size: int, threads: int) -> None:
  """Reads every source's training batches into host memory as `trainer.refresh_boda` reads them (this process's
  rows, `threads` threads each reading whole batches), placing nothing on the devices."""
  for domain, idx in zip(data.sources, data.train_idx):
    batches, _ = trainer.eval_host_batches(domain, idx, batch_size=batch_size, read_threads=threads)
    for _ in batches:
      pass


def _passes(run, count: int) -> list[float]:
  """Seconds of each of `count` calls of run()."""
  seconds = []
  for _ in range(count):
    t0 = time.perf_counter()
    run()
    seconds.append(time.perf_counter() - t0)
  return seconds


def time_refresh(built: BuiltStep, data: ExperimentData, settings: Settings) -> list[dict[str, Any]]:
  """Eval-forward, eval-read and full-refresh rows for a BoDA step's model, the last two at each reading-thread
  count of `settings.refresh_thread_list` (config.data.num_threads)."""
  config, st, mesh = built.config, built.stage, built.mesh
  eval_batch = int(config.data.eval_batch)
  sharding.check_global_batch(eval_batch, mesh, "config.data.eval_batch")
  rng = np.random.default_rng(settings.seed)
  size = int(config.data.stored_size)
  images = sharding.shard_batch({"image": rng.integers(0, 256, (eval_batch, size, size, 3), dtype=np.uint8)},
                                mesh)["image"]
  params, batch_stats = built.state.params, built.state.batch_stats
  eval_fn = st.eval_fn  # the jitted function refresh_boda calls: its first call here compiles it for both

  def forward(steps):
    out = None
    for _ in range(steps):
      out = eval_fn(params, batch_stats, images)
    return out

  timing = timed_windows(forward, warmup=settings.warmup, steps=settings.steps, repeats=settings.repeats)
  forward_row = {"name": "eval forward (device data)", "batch": eval_batch, "devices": built.num_devices,
                 "images_per_s": eval_batch / timing["step_s"], "step_ms": 1e3 * timing["step_s"],
                 "first_call_s": timing["first_call_s"],
                 "compile_s": max(timing["first_call_s"] - timing["step_s"], 0.0)}
  rows = [forward_row]

  data, repeats = _repeated_training_split(data, int(settings.refresh_images))
  num_images = int(sum(len(i) for i in data.train_idx))
  passes = 1 + min(int(settings.repeats), 2)  # each row reads the split that often: keep a row to seconds
  note = f"{num_images} training images per pass" + (f" (the split's indices {repeats} times)" if repeats > 1 else "")

  def row(name: str, threads: int, seconds: list[float]) -> dict[str, Any]:
    step_s = statistics.median(seconds[1:])  # the first pass starts the reading threads (and compiles)
    # How close it comes to the forward pass alone (session 13, one H100, serial refresh: 1,628 / 25,999 = 0.06x).
    return {"name": f"{name} [data.num_threads={threads}]", "batch": eval_batch, "devices": built.num_devices,
            "images_per_s": num_images / step_s, "step_ms": 1e3 * step_s * eval_batch / num_images,
            "first_call_s": seconds[0], "note": note, "ratio": num_images / step_s / forward_row["images_per_s"],
            "ratio_to": forward_row["name"]}

  for threads in settings.refresh_thread_list:
    read = _passes(lambda: _eval_read_pass(data, batch_size=eval_batch, threads=threads), passes)
    rows.append(row("eval read (grain eval batches, host only)", threads, read))
    threaded = config.copy_and_resolve_references()
    threaded.data.num_threads = int(threads)
    refreshed = None

    def refresh():
      nonlocal refreshed
      refreshed = trainer.refresh_boda(built.state, st.eval_fn, st.moments_fn, data, config=threaded, mesh=mesh)
      jax.block_until_ready(refreshed.boda)

    rows.append(row("refresh_boda (grain eval batches, features, moments)", threads, _passes(refresh, passes)))
    if not bool(refreshed.boda.initialized):
      raise RuntimeError("benchmark: trainer.refresh_boda left the BoDA statistics uninitialised")
  return rows
