"""sharding.device_batches: the trainer's host batches placed on the mesh, read ahead by a thread."""

import threading
import time

import jax
import numpy as np
import pytest

from data_pipelines import pipeline
from tests.memory_domain import MemoryDomain
from wbcdg_jax import checkpoint, sharding


DOMAINS = [MemoryDomain("a", 20, 1), MemoryDomain("b", 12, 2)]


def _host_batches():
  return pipeline.make_train_dataset(DOMAINS, [np.arange(20), np.arange(12)], per_domain_batch=4, seed=3)


def _assert_same(device_batch, host_batch):
  assert set(device_batch) == set(host_batch)
  for k, v in host_batch.items():
    np.testing.assert_array_equal(np.asarray(device_batch[k]), v)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_device_batches_are_the_host_batches_on_the_mesh(prefetch):
  mesh = sharding.make_mesh()
  host = iter(_host_batches())
  it = iter(sharding.device_batches(_host_batches(), mesh, prefetch=prefetch))
  for _ in range(7):
    batch = next(it)
    assert all(isinstance(v, jax.Array) and v.sharding == sharding.batch_sharded(mesh) for v in batch.values())
    _assert_same(batch, next(host))
  it.close()


def test_state_is_the_position_of_the_consumer_not_of_the_read_ahead():
  mesh = sharding.make_mesh()
  host = iter(_host_batches())
  it = iter(sharding.device_batches(_host_batches(), mesh, prefetch=4))
  for _ in range(3):
    next(it), next(host)
  time.sleep(0.2)  # the thread has read ahead by now (4 batches queued, one more waiting to be put)
  state = it.get_state()
  assert state == host.get_state()
  expected = [next(host) for _ in range(5)]
  for e in expected[:2]:
    _assert_same(next(it), e)  # taking more does not change what was saved
  again = iter(sharding.device_batches(_host_batches(), mesh, prefetch=4))
  next(again)
  again.set_state(state)  # drops the batch it read ahead
  for e in expected:
    _assert_same(next(again), e)
  it.close()
  again.close()


def test_orbax_checkpoint_of_the_prefetching_iterator_resumes_exactly(tmp_path):
  mesh = sharding.make_mesh()
  state = sharding.replicate({"w": np.arange(3, dtype=np.float32)}, mesh)
  it = iter(sharding.device_batches(_host_batches(), mesh, prefetch=3))
  for _ in range(5):
    next(it)
  ckpts = checkpoint.StateCheckpoints(str(tmp_path / "ckpt"), keep=2)
  ckpts.save(5, state, it)
  expected = [jax.device_get(next(it)) for _ in range(3)]  # before the save finishes: it must hold position 5
  ckpts.wait()
  it2 = iter(sharding.device_batches(_host_batches(), mesh, prefetch=3))
  next(it2)
  ckpts.restore(5, state, it2)
  ckpts.close()
  for e in expected:
    _assert_same(next(it2), e)
  it.close()
  it2.close()


def test_a_read_error_reaches_the_loop_and_close_stops_the_thread():
  class _Broken(MemoryDomain):
    def __init__(self):
      super().__init__("broken", 12, 4)
      self.source[5] = {"image": np.zeros((4, 4, 3), np.uint8), "label": 0}  # wrong size

  mesh = sharding.make_mesh()
  ds = pipeline.make_train_dataset([DOMAINS[0], _Broken()], [np.arange(20), np.arange(12)], per_domain_batch=12,
                                   seed=0)
  it = iter(sharding.device_batches(ds, mesh, prefetch=2))
  with pytest.raises(ValueError, match=r"domain 'broken' record 5: field 'image' has shape \(4, 4, 3\)"):
    next(it)
  it.close()
  assert not _prefetch_threads()
  it = iter(sharding.device_batches(_host_batches(), mesh, prefetch=2))
  next(it)
  assert len(_prefetch_threads()) == 1
  it.close()
  assert not _prefetch_threads()


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name.startswith("grain-thread-prefetch-ThreadPrefetchDatasetIterator")]


def test_negative_prefetch_is_refused():
  with pytest.raises(ValueError, match="prefetch must be >= 0"):
    sharding.device_batches(_host_batches(), sharding.make_mesh(), prefetch=-1)


def test_o_major_kernels_setting():
  mesh = sharding.make_mesh()  # CPU devices here: 'auto' keeps the row-major kernels
  assert sharding.o_major_kernels_on("auto", mesh) is False
  assert sharding.o_major_kernels_on("true", mesh) is True and sharding.o_major_kernels_on(False, mesh) is False
  with pytest.raises(ValueError, match=r"config.train.o_major_kernels='yes'"):
    sharding.o_major_kernels_on("yes", mesh)
