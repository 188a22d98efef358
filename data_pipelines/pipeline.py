"""Host input pipelines (grain): domain-balanced training batches and padded evaluation batches.

Both pipelines are grain `MapDataset`s indexed by batch number (training: the global step; evaluation: the batch
index), mapped to a loader that reads the images of that batch, then turned into an `IterDataset` that reads
ahead in threads (`grain.ReadOptions`) and optionally in worker processes (`mp_prefetch`). Because every batch is
a pure function of its number (see `sampling.py`), the iterator's state is just "next batch number" (per worker),
restorable exactly, and the batch content does not depend on the number of threads or workers.

Host batch contract (BRIEF): dict(image=uint8 [B,S,S,3], label=int32 [B], domain=int32 [B], mask=bool [B]).

Multi-host: the global batch of a step has rows ordered by domain blocks (rows [d*b:(d+1)*b] from source domain
d). Process p of P reads the contiguous rows [p*B/P, (p+1)*B/P) of it, so concatenating the processes' batches in
process order (what `jax.make_array_from_process_local_data` does for a batch axis sharded over processes)
reproduces the global domain-block batch. B/P need not be a multiple of b: a process's rows may span a block
boundary, which is why every row carries its `domain`.

Checkpointing with orbax (the iterator is a `grain.DatasetIterator`; grain ships an orbax handler):

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=3))
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state), data=iterator_save_args(train_iter)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=iterator_restore_args(train_iter)))
    # train_iter is restored in place (restored["data"] is the same object).

Each process writes its own `process_<i>-of-<n>.json` (index and count from jax). Alternatively, since batches
are a pure function of the step, `make_train_iterator(..., start_step=step)` resumes exactly without any saved
iterator state (useful if num_workers changed between runs: grain's multi-worker state records the worker count).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from data_pipelines import example_wire
from data_pipelines import sampling as sampling_lib


def _raw_image(serialized: bytes, image_size: int) -> np.ndarray | None:
  """The 'image' field of a serialized tf.train.Example as uint8 [S, S, 3], if it holds one raw byte string of
  that size (how the builders store it: `tfds.features.Tensor(..., encoding=BYTES)`); else None. The image is a
  read-only view into `serialized`, found by `example_wire` where it can (protobuf decodes the rest)."""
  span = example_wire.bytes_feature_span(serialized, "image")
  if span is not None:
    offset, size = span
    if size != image_size * image_size * 3:
      return None
    return np.frombuffer(serialized, np.uint8, count=size, offset=offset).reshape(image_size, image_size, 3)
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  feature = tf_example_pb2.Example.FromString(serialized).features.feature.get("image")
  values = feature.bytes_list.value if feature is not None else ()
  if len(values) != 1 or len(values[0]) != image_size * image_size * 3:
    return None
  return np.frombuffer(values[0], np.uint8).reshape(image_size, image_size, 3)


@dataclasses.dataclass(frozen=True)
class _Images:
  """Reads the 'image' field (uint8 [S, S, 3]) of a domain's records by index (picklable).

  A TFDS array_record source decodes every feature of a record in Python (the builders store six: image, label,
  path, group, ...): 260 us a 64 px record on one core of a 2-core AMD EPYC, when the pipeline needs the image
  alone. Where the source is one, the image is cut out of the serialized record instead (66 us, 48 of them
  array_record's read), found by walking the wire format (`example_wire`) rather than decoding with protobuf
  (at 256 px, 4 reading threads, batches of 64 on 2 cores: 5,773 -> 6,586 images/s, median of 4; protobuf
  holds Python's lock while it copies the image twice, which capped the threads at ~15,000 records/s however many
  cores read); `raw` says so, decided on the first record by `of`, where both ways must give the same image.
  Records are read one by one: on local disk that is faster than array_record's parallel `__getitems__`
  (measured), and parallelism comes from grain's reading threads / worker processes, which work on several
  batches at once. At 256 px the read itself dominates where the records are zstd-compressed (TFDS's writer):
  ~385 us a 197 KB record against ~71 us uncompressed, which is how the builders store them now
  (`base_builder.WbcConfig.record_compression`); the walk and the copy into the batch ~40 us.

  Attributes:
    source: random-access records; `source[i]` is a dict with 'image' uint8 [S, S, 3]; a TFDS array_record
      source also has `.data_source`, its serialized records.
    name: domain name, for error messages.
    image_size: S.
    raw: read the image out of `source.data_source[i]`, not out of `source[i]`.
  """
  source: Any
  name: str
  image_size: int
  raw: bool = False

  @classmethod
  def of(cls, source: Any, name: str, image_size: int) -> _Images:
    records = getattr(source, "data_source", None)
    raw = False
    if records is not None and len(source) > 0:
      try:
        first = _raw_image(records[0], image_size)
      except Exception:  # pylint: disable=broad-except  # not serialized Examples: decode as the source does
        first = None
      raw = first is not None and np.array_equal(first, np.asarray(source[0]["image"]))
    return cls(source=source, name=name, image_size=image_size, raw=raw)

  def _read(self, i: int) -> np.ndarray:
    if self.raw:
      image = _raw_image(self.source.data_source[i], self.image_size)
      if image is None:
        raise ValueError(f"pipeline: domain {self.name!r} record {i}: field 'image' is not {self.image_size}x"
                         f"{self.image_size}x3 raw uint8 bytes, as record 0's is")
      return image
    return np.asarray(self.source[i]["image"])

  def __call__(self, indices: np.ndarray) -> np.ndarray:
    """uint8 [n, S, S, 3]: the images of records `indices` (int [n])."""
    s = self.image_size
    out = np.empty((len(indices), s, s, 3), np.uint8)
    for row, i in enumerate(int(i) for i in indices):
      image = self._read(i)
      if image.shape != out.shape[1:] or image.dtype != np.uint8:
        raise ValueError(f"pipeline: domain {self.name!r} record {i}: field 'image' has shape {image.shape} dtype "
                         f"{image.dtype}, expected uint8 {out.shape[1:]}")
      out[row] = image
    return out


def _check_indices(indices: np.ndarray, size: int, name: str, allow_empty: bool = False) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f"pipeline: domain {name!r}: indices must be a 1-D int array, got {indices.dtype} "
                     f"{indices.shape}")
  indices = indices.astype(np.int64)
  if not allow_empty and indices.size == 0:
    raise ValueError(f"pipeline: domain {name!r}: no indices to read")
  if indices.size and (indices.min() < 0 or indices.max() >= size):
    raise ValueError(f"pipeline: domain {name!r}: indices must be in [0, {size}), got range "
                     f"[{indices.min()}, {indices.max()}]")
  return indices


def _local_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  """Rows of the global batch that process `process_index` reads (contiguous, equal sizes)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"pipeline: process_index {process_index} not in [0, process_count={process_count})")
  if global_batch % process_count:
    raise ValueError(f"pipeline: global batch {global_batch} is not divisible by process_count {process_count}")
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


@dataclasses.dataclass(frozen=True)
class _TrainStepLoader:
  """Callable: global step -> this process's part of the step's domain-balanced batch (picklable)."""
  images: tuple[_Images, ...]
  labels: tuple[np.ndarray, ...]  # Per domain: int64 [N_d] labels of all records (record order).
  image_size: int
  sampler: sampling_lib.StepSampler
  rows: slice

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    index = self.sampler.step_indices(int(step))  # [K, b]
    num_domains, b = index.shape
    domain = np.repeat(np.arange(num_domains, dtype=np.int32), b)[self.rows]
    index = index.reshape(-1)[self.rows]
    image = np.empty((index.size, self.image_size, self.image_size, 3), np.uint8)
    label = np.empty(index.size, np.int32)
    for d in np.unique(domain):
      sel = domain == d
      image[sel] = self.images[d](index[sel])
      label[sel] = self.labels[d][index[sel]]
    return dict(image=image, label=label, domain=domain, mask=np.ones(index.size, bool))


def _image_size(domains: Sequence[Any]) -> int:
  sizes = {int(d.image_size) for d in domains}
  if len(sizes) != 1:
    raise ValueError("pipeline: all domains must share one image_size, got "
                     + ", ".join(f"{d.name}={d.image_size}" for d in domains))
  return sizes.pop()


def _to_iter(ds: grain.MapDataset, *, num_threads: int, prefetch: int, num_workers: int) -> grain.IterDataset:
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    # grain's multiprocess prefetch reads an absl flag; outside an absl app (scripts, tests) flags are unparsed
    # and reading it raises. Marking them parsed keeps their defaults and does not stop a later app.run/FLAGS(argv).
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # Each worker process computes every num_workers-th batch; grain interleaves them back in order.
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                           per_worker_buffer_size=max(1, prefetch)))
  return it_ds


def make_train_dataset(
    domains: Sequence[Any],
    indices: Sequence[np.ndarray],
    *,
    per_domain_batch: int,
    seed: int,
    sampling: str = "uniform",
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> grain.IterDataset:
  """The training pipeline as a (re-iterable) grain IterDataset; see `make_train_iterator` for the arguments."""
  if len(domains) != len(indices) or not domains:
    raise ValueError(f"make_train_iterator: need one indices array per domain, got {len(domains)} domains and "
                     f"{len(indices)} index arrays")
  if start_step < 0:
    raise ValueError(f"make_train_iterator: start_step must be >= 0, got {start_step}")
  image_size = _image_size(domains)
  idx = [_check_indices(i, len(d.source), d.name) for d, i in zip(domains, indices)]
  labels = tuple(np.asarray(d.labels, np.int64) for d in domains)
  sampler = sampling_lib.StepSampler(idx, [lab[i] for lab, i in zip(labels, idx)],
                                     per_domain_batch=per_domain_batch, seed=seed, sampling=sampling)
  loader = _TrainStepLoader(
      images=tuple(_Images.of(d.source, d.name, image_size) for d in domains), labels=labels,
      image_size=image_size, sampler=sampler,
      rows=_local_rows(per_domain_batch * len(domains), process_index, process_count))
  # The step axis is "infinite" (sys.maxsize): training runs for as many steps as it asks for.
  ds = grain.MapDataset.range(start_step, sys.maxsize).map(loader)
  return _to_iter(ds, num_threads=num_threads, prefetch=prefetch, num_workers=num_workers)


def make_train_iterator(
    domains: Sequence[Any],
    indices: Sequence[np.ndarray],
    *,
    per_domain_batch: int,
    seed: int,
    sampling: str = "uniform",
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> grain.DatasetIterator:
  """Endless iterator of domain-balanced training batches (this process's rows).

  Batch at global step t (t = start_step, start_step+1, ...): domain d contributes `per_domain_batch` examples
  chosen by `sampling.StepSampler` from `indices[d]` (seeded by (seed, d, t) / per-epoch permutations);
  rows are ordered by domain blocks; this process gets rows [p*B/P, (p+1)*B/P) of the global batch.

  Args:
    domains: K DomainData-like objects (.source random access with 'image' uint8 [S,S,3]; .labels int64 [N];
      .name; .image_size S, equal for all).
    indices: per domain, int [n_d] training indices into its source (e.g. `folds.split_domain(...).train`).
    per_domain_batch: b, examples per domain per global step.
    seed: non-negative int; the whole batch sequence is a function of it (and of the data and indices).
    sampling: 'uniform' (per-domain epochs, reshuffled every epoch) or 'class_balanced' (cRT weights
      1 / (N[d,c] * classes present in d), with replacement).
    num_workers: worker processes (0 = read in this process with `num_threads` threads). Output is identical for
      any num_workers/num_threads.
    num_threads: reading threads (per process).
    prefetch: batches read ahead (per worker).
    process_index, process_count: this host's index and the host count (b*K must be divisible by it).
    start_step: first global step produced (exact resume without saved state).

  Returns:
    grain.DatasetIterator yielding dict(image uint8 [B,S,S,3], label int32 [B], domain int32 [B], mask bool [B]
    all True) with B = b*K/process_count. `get_state()` / `set_state()` save and restore its position exactly
    (JSON-serializable dict); use `iterator_save_args` / `iterator_restore_args` with an orbax CheckpointManager.
    Call `.close()` when done if num_workers > 0.
  """
  return iter(make_train_dataset(
      domains, indices, per_domain_batch=per_domain_batch, seed=seed, sampling=sampling,
      num_workers=num_workers, num_threads=num_threads, prefetch=prefetch, process_index=process_index,
      process_count=process_count, start_step=start_step))


@dataclasses.dataclass(frozen=True)
class _EvalBatchLoader:
  """Callable: batch number -> this process's rows of that evaluation batch, padded (picklable)."""
  images: _Images
  labels: np.ndarray  # int64 [N] labels of all records.
  image_size: int
  indices: np.ndarray  # int64 [n] indices to evaluate, in order.
  global_batch: int
  rows: slice
  domain_index: int

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    positions = np.arange(batch * self.global_batch, (batch + 1) * self.global_batch)[self.rows]
    mask = positions < self.indices.size
    local = positions.size
    image = np.zeros((local, self.image_size, self.image_size, 3), np.uint8)  # Padding rows stay zero.
    label = np.zeros(local, np.int32)
    real = self.indices[positions[mask]]
    if real.size:
      image[mask] = self.images(real)
      label[mask] = self.labels[real]
    return dict(image=image, label=label, domain=np.full(local, self.domain_index, np.int32), mask=mask)


def make_eval_iterator(
    domain: Any,
    indices: np.ndarray,
    *,
    batch_size: int,
    domain_index: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    num_threads: int = 4,
    prefetch: int = 4,
) -> tuple[grain.IterDataset, int]:
  """Deterministic, padded evaluation batches over `indices` of one domain.

  Global batch j holds indices[j*batch_size:(j+1)*batch_size] in order, padded at the end of the last batch with
  rows of zeros (image 0, label 0, mask False); process p gets its contiguous rows [p*B/P, (p+1)*B/P), so every
  index appears exactly once across processes and all processes run the same number of batches.

  Args:
    domain: DomainData-like object (.source, .labels, .name, .image_size).
    indices: int [n] indices into domain.source (n may be 0: then there are 0 batches).
    batch_size: global batch size B (divisible by process_count).
    domain_index: value of the 'domain' field of every row.
    process_index, process_count: this host and the host count.
    num_workers, num_threads, prefetch: as in `make_train_iterator`.

  Returns:
    (dataset, num_batches): `dataset` is a re-iterable grain IterDataset (each `iter()` starts from the first
    batch) of dict(image uint8 [B/P,S,S,3], label int32, domain int32, mask bool); num_batches = ceil(n / B).
  """
  if batch_size < 1:
    raise ValueError(f"make_eval_iterator: batch_size must be >= 1, got {batch_size}")
  idx = _check_indices(indices, len(domain.source), domain.name, allow_empty=True)
  num_batches = -(-idx.size // batch_size)
  loader = _EvalBatchLoader(
      images=_Images.of(domain.source, domain.name, int(domain.image_size)),
      labels=np.asarray(domain.labels, np.int64), image_size=int(domain.image_size), indices=idx,
      global_batch=batch_size, rows=_local_rows(batch_size, process_index, process_count),
      domain_index=int(domain_index))
  ds = grain.MapDataset.range(num_batches).map(loader)
  return _to_iter(ds, num_threads=num_threads, prefetch=prefetch, num_workers=num_workers), num_batches


def iterator_save_args(iterator: grain.DatasetIterator) -> Any:
  """Orbax save args for a training iterator (put it in an `ocp.args.Composite` next to the model state)."""
  import grain.checkpoint  # pylint: disable=g-import-not-at-top  # Registers the orbax handler on import.
  return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DatasetIterator) -> Any:
  """Orbax restore args: restoring sets `iterator`'s state in place (it must be built with the same arguments)."""
  import grain.checkpoint  # pylint: disable=g-import-not-at-top
  return grain.checkpoint.CheckpointRestore(iterator)
