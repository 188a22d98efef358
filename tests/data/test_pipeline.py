"""Tests of data_pipelines/pipeline.py and sampling.py: training and evaluation host batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipelines import pipeline
from data_pipelines import sampling

S = 4  # Tiny images: pixel (0, 0) encodes the record, so tests can check which example a row holds.


@dataclasses.dataclass(frozen=True)
class _Domain:
  """DomainData-like: .name, .source (list of dicts), .labels int64 [N], .groups [N], .image_size."""
  name: str
  source: list
  labels: np.ndarray
  groups: np.ndarray
  image_size: int


def _domain(domain_id: int, labels, size: int = S) -> _Domain:
  labels = np.asarray(labels, np.int64)
  source = []
  for i, lab in enumerate(labels):
    image = np.zeros((size, size, 3), np.uint8)
    image[0, 0] = (domain_id, i % 256, i // 256)  # Decodable (domain, record index).
    source.append(dict(image=image, label=lab))
  return _Domain(f"dom{domain_id}", source, labels, np.array([f"g{i}" for i in range(labels.size)]), size)


def _decode(batch):
  """(domain ids, record indices) encoded in the images of a batch."""
  px = batch["image"][:, 0, 0].astype(np.int64)
  return px[:, 0], px[:, 1] + 256 * px[:, 2]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(name="two_domains")
def _two_domains():
  doms = [_domain(0, np.arange(23) % 4), _domain(1, np.arange(11) % 3)]
  train = [np.arange(0, 23, 1)[::2], np.arange(11)[1:]]  # Training subsets (12 and 10 indices).
  return doms, train


def test_train_batch_contract_and_domain_blocks(two_domains):
  doms, train = two_domains
  it = pipeline.make_train_iterator(doms, train, per_domain_batch=3, seed=0)
  for batch in _take(it, 10):
    assert batch["image"].shape == (6, S, S, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["domain"].dtype == np.int32
    assert batch["mask"].dtype == np.bool_ and batch["mask"].all()
    np.testing.assert_array_equal(batch["domain"], [0, 0, 0, 1, 1, 1])
    dom, idx = _decode(batch)
    np.testing.assert_array_equal(dom, batch["domain"])
    for d in range(2):
      rows = slice(3 * d, 3 * d + 3)
      assert np.isin(idx[rows], train[d]).all()
      np.testing.assert_array_equal(batch["label"][rows], doms[d].labels[idx[rows]])


def test_uniform_sampling_walks_reshuffled_epochs():
  n, b = 10, 4
  sampler = sampling.StepSampler([np.arange(100, 100 + n), np.arange(n)], [np.zeros(n), np.zeros(n)],
                                 per_domain_batch=b, seed=5)
  stream = np.concatenate([sampler.domain_block(t, 0) for t in range(10)])  # 40 draws = 4 epochs.
  epochs = stream.reshape(4, n)
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(100, 100 + n))  # Each epoch is a permutation.
  assert len({tuple(e) for e in epochs}) == 4  # Reshuffled every epoch.
  other = np.concatenate([sampler.domain_block(t, 1) for t in range(3)])[:n]
  assert not np.array_equal(other, epochs[0] - 100)  # Domains are shuffled independently.


def test_sampling_reproducible_and_seed_dependent(two_domains):
  doms, train = two_domains
  kw = dict(per_domain_batch=3)
  a = _take(pipeline.make_train_iterator(doms, train, seed=1, **kw), 5)
  b = _take(pipeline.make_train_iterator(doms, train, seed=1, **kw), 5)
  c = _take(pipeline.make_train_iterator(doms, train, seed=2, **kw), 5)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_class_balanced_weights_formula():
  labels = np.array([3, 3, 3, 7, 3, 9, 9])
  counts = {3: 4, 7: 1, 9: 2}
  expected = np.array([1 / (counts[c] * 3) for c in labels])
  np.testing.assert_allclose(sampling.class_balanced_weights(labels), expected)


def test_class_balanced_frequencies_match_weights():
  # Domain 0: classes 0/1/5 with 60/8/1 members; domain 1: a single class.
  lab0 = np.array([0] * 60 + [1] * 8 + [5] * 1)
  idx0 = np.arange(1000, 1000 + lab0.size)
  sampler = sampling.StepSampler([idx0, np.arange(5)], [lab0, np.zeros(5)], per_domain_batch=8, seed=3,
                                 sampling="class_balanced")
  draws = np.concatenate([sampler.domain_block(t, 0) for t in range(1500)])  # 12,000 draws.
  freq = np.bincount(draws - 1000, minlength=lab0.size)
  # Independent expectation: each present class 1/3, uniform within the class.
  counts = np.bincount(lab0)
  expected = draws.size / (3 * counts[lab0])
  per_class = np.array([freq[lab0 == c].sum() for c in (0, 1, 5)])
  chi2_class = np.sum((per_class - draws.size / 3) ** 2 / (draws.size / 3))
  assert chi2_class < 13.8  # df 2, p = 0.001.
  chi2 = np.sum((freq - expected) ** 2 / expected)
  assert chi2 < 125  # df 68, p ~ 1e-4.
  # Deterministic for the seed.
  again = sampling.StepSampler([idx0, np.arange(5)], [lab0, np.zeros(5)], per_domain_batch=8, seed=3,
                               sampling="class_balanced")
  np.testing.assert_array_equal(again.domain_block(77, 0), sampler.domain_block(77, 0))


def test_class_balanced_iterator_reads_sampler_indices(two_domains):
  doms, train = two_domains
  it = pipeline.make_train_iterator(doms, train, per_domain_batch=3, seed=4, sampling="class_balanced")
  sampler = sampling.StepSampler(train, [d.labels[i] for d, i in zip(doms, train)], per_domain_batch=3, seed=4,
                                 sampling="class_balanced")
  for step, batch in enumerate(_take(it, 4)):
    np.testing.assert_array_equal(_decode(batch)[1], sampler.step_indices(step).reshape(-1))


def test_state_roundtrip_and_start_step(two_domains):
  doms, train = two_domains
  kw = dict(per_domain_batch=3, seed=9)
  reference = _take(pipeline.make_train_iterator(doms, train, **kw), 12)
  it = pipeline.make_train_iterator(doms, train, **kw)
  _take(it, 7)
  state = it.get_state()
  fresh = pipeline.make_train_iterator(doms, train, **kw)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 5), reference[7:])
  _assert_batches_equal(_take(pipeline.make_train_iterator(doms, train, start_step=7, **kw), 5), reference[7:])


def test_state_roundtrip_through_orbax(two_domains, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  doms, train = two_domains
  kw = dict(per_domain_batch=3, seed=2)
  it = pipeline.make_train_iterator(doms, train, **kw)
  _take(it, 4)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  params = {"w": jnp.arange(3.0)}
  mngr.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(params),
                                       data=pipeline.iterator_save_args(it)))
  mngr.wait_until_finished()
  expected = _take(it, 3)
  restored_it = pipeline.make_train_iterator(doms, train, **kw)
  restored = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(params),
                                                     data=pipeline.iterator_restore_args(restored_it)))
  np.testing.assert_array_equal(restored["state"]["w"], params["w"])
  _assert_batches_equal(_take(restored["data"], 3), expected)
  mngr.close()


@pytest.mark.parametrize("per_domain_batch,process_count", [(4, 2), (3, 3), (6, 4)])
def test_process_shards_are_disjoint_and_union_to_global_batch(two_domains, per_domain_batch, process_count):
  doms, train = two_domains
  kw = dict(per_domain_batch=per_domain_batch, seed=11)
  global_batches = _take(pipeline.make_train_iterator(doms, train, **kw), 3)
  shards = [_take(pipeline.make_train_iterator(doms, train, process_index=p, process_count=process_count, **kw),
                  3) for p in range(process_count)]
  for step, full in enumerate(global_batches):
    parts = [s[step] for s in shards]
    assert {p["image"].shape[0] for p in parts} == {2 * per_domain_batch // process_count}
    for k in full:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])


def test_train_iterator_errors(two_domains):
  doms, train = two_domains
  with pytest.raises(ValueError, match="not divisible by process_count"):
    pipeline.make_train_iterator(doms, train, per_domain_batch=3, seed=0, process_count=4)
  with pytest.raises(ValueError, match=r"domain 'dom1': indices must be in \[0, 11\)"):
    pipeline.make_train_iterator(doms, [train[0], np.array([0, 11])], per_domain_batch=3, seed=0)
  with pytest.raises(ValueError, match="image_size"):
    pipeline.make_train_iterator([doms[0], _domain(2, [0, 1], size=8)], train, per_domain_batch=1, seed=0)
  with pytest.raises(ValueError, match="sampling must be one of"):
    pipeline.make_train_iterator(doms, train, per_domain_batch=3, seed=0, sampling="balanced")


@pytest.mark.parametrize("n,batch_size,process_count", [(17, 6, 2), (12, 4, 1), (5, 8, 4), (0, 4, 2)])
def test_eval_covers_every_index_once(n, batch_size, process_count):
  dom = _domain(3, np.arange(40) % 5)
  indices = np.random.default_rng(0).permutation(40)[:n]
  seen, labels = [], []
  for p in range(process_count):
    ds, num_batches = pipeline.make_eval_iterator(dom, indices, batch_size=batch_size, domain_index=2,
                                                  process_index=p, process_count=process_count)
    assert num_batches == -(-n // batch_size)
    batches = list(ds)
    assert len(batches) == num_batches
    _assert_batches_equal(list(ds), batches)  # Re-iterable, same order.
    for j, batch in enumerate(batches):
      local = batch_size // process_count
      assert batch["image"].shape == (local, S, S, 3)
      positions = j * batch_size + p * local + np.arange(local)
      np.testing.assert_array_equal(batch["mask"], positions < n)
      np.testing.assert_array_equal(batch["domain"], 2)
      _, idx = _decode(batch)
      np.testing.assert_array_equal(idx[batch["mask"]], indices[positions[positions < n]])
      assert not batch["image"][~batch["mask"]].any()
      seen.append(idx[batch["mask"]])
      labels.append(batch["label"][batch["mask"]])
  seen = np.concatenate(seen) if seen else np.zeros(0, np.int64)
  np.testing.assert_array_equal(np.sort(seen), np.sort(indices))
  if n:
    np.testing.assert_array_equal(np.concatenate(labels), dom.labels[seen])


# --- One end-to-end test on a real array_record dataset written by TFDS, read with worker processes. ---

_N_RECORDS = 24


tfds = pytest.importorskip("tensorflow_datasets")


class PipelineTestTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Tiny array_record dataset with the stored-data contract's image/label features.

  Defined at module level so worker processes can unpickle its data source by reference.
  """
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup for a class inside a package needs the optional importlib_resources package.
    from etils import epath
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(S, S, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        "group": tfds.features.Text(),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(_N_RECORDS):
      image = np.zeros((S, S, 3), np.uint8)
      image[0, 0] = (7, i, 0)
      yield i, {"image": image, "label": i % 3, "group": f"g{i}"}


def _tiny_builder_class():
  return PipelineTestTiny


def test_array_record_dataset_with_worker_processes(tmp_path):
  builder = _tiny_builder_class()(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source()["train"]
  # What index.npz provides in the real builders: labels in record order.
  labels = np.array([source[i]["label"] for i in range(len(source))], np.int64)
  dom = _Domain("tiny", source, labels, np.array([f"g{i}" for i in range(len(source))]), S)
  other = _domain(1, np.arange(9) % 3)
  train = [np.arange(_N_RECORDS), np.arange(9)]
  kw = dict(per_domain_batch=4, seed=0, sampling="uniform")
  in_process = _take(pipeline.make_train_iterator([dom, other], train, **kw), 6)
  it = pipeline.make_train_iterator([dom, other], train, num_workers=2, **kw)
  try:
    with_workers = _take(it, 3)
    state = it.get_state()
    with_workers += _take(it, 3)
  finally:
    it.close()
  _assert_batches_equal(with_workers, in_process)
  for batch in in_process:
    dom_ids, keys = _decode(batch)
    tiny = batch["domain"] == 0
    assert (dom_ids[tiny] == 7).all()
    np.testing.assert_array_equal(batch["label"][tiny], keys[tiny] % 3)  # Image and label from the same record.
  resumed = pipeline.make_train_iterator([dom, other], train, num_workers=2, **kw)
  try:
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), in_process[3:])
  finally:
    resumed.close()


def test_images_of_a_tfds_source_are_cut_out_of_the_serialized_records(tmp_path):
  """The builders' raw-bytes image is read without decoding the record's other features, and equals the decoded
  one; a source without serialized records (a list) is read as before."""
  builder = _tiny_builder_class()(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source()["train"]
  images = pipeline._Images.of(source, "tiny", S)  # pylint: disable=protected-access
  assert images.raw
  order = np.random.default_rng(0).permutation(len(source))
  np.testing.assert_array_equal(images(order), np.stack([source[int(i)]["image"] for i in order]))
  listed = pipeline._Images.of(_domain(0, [0, 1, 2]).source, "listed", S)  # pylint: disable=protected-access
  assert not listed.raw and listed(np.array([2, 0]))[:, 0, 0, 1].tolist() == [2, 0]


class _SerializedSource:
  """A TFDS-like source: `data_source[i]` serialized records, `source[i]` the decoded dict."""

  def __init__(self, records, decoded):
    self.data_source, self._decoded = records, decoded

  def __len__(self):
    return len(self._decoded)

  def __getitem__(self, i):
    return {"image": self._decoded[i]}


def _example(**features) -> bytes:
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel

  example = tf_example_pb2.Example()
  for key, value in features.items():
    if isinstance(value, bytes):
      example.features.feature[key].bytes_list.value.append(value)
    else:
      example.features.feature[key].int64_list.value.extend(value)
  return example.SerializeToString()


def test_images_fall_back_to_the_source_unless_the_raw_bytes_are_its_image():
  decoded = [np.full((S, S, 3), i, np.uint8) for i in range(3)]
  of = pipeline._Images.of  # pylint: disable=protected-access
  as_ints = _SerializedSource([_example(image=list(d.ravel())) for d in decoded], decoded)
  not_examples = _SerializedSource([b"\xff\x00 not a protobuf"] * 3, decoded)
  other_pixels = _SerializedSource([_example(image=(d + 1).tobytes()) for d in decoded], decoded)
  for source in (as_ints, not_examples, other_pixels):
    images = of(source, "fake", S)
    assert not images.raw
    np.testing.assert_array_equal(images(np.array([2, 1])), np.stack([decoded[2], decoded[1]]))
  # Raw bytes that are the image: read raw; a later record that is not names the domain and the record.
  records = [_example(image=d.tobytes(), label=[i]) for i, d in enumerate(decoded)]
  records[1] = _example(image=decoded[1].tobytes()[:-1])
  images = of(_SerializedSource(records, decoded), "fake", S)
  assert images.raw
  np.testing.assert_array_equal(images(np.array([2, 0])), np.stack([decoded[2], decoded[0]]))
  with pytest.raises(ValueError, match=r"domain 'fake' record 1: field 'image' is not 4x4x3 raw uint8 bytes"):
    images(np.array([0, 1]))
