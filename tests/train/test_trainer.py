"""End to end on the embedded synthetic data at the `tiny` preset: train, select, evaluate, resume, stage 2."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from configs import boda_decoupled, erm
from data_pipelines import pipeline
from tests.memory_domain import MemoryDomain
from tests.train.step_fixture import tiny_config, tiny_counts
from wbcdg_jax import checkpoint, sharding, trainer
from wbcdg_jax.stage import build_stage


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(module, data_dir):
  config = module.get_config("tiny")
  config.data.data_dir = data_dir
  return config


def _spy_on_eval_iterators(monkeypatch) -> list[tuple[int, int]]:
  """(num_threads, prefetch) of every evaluation iterator made from now on."""
  made, make = [], pipeline.make_eval_iterator

  def spy(*args, **kwargs):
    made.append((kwargs["num_threads"], kwargs["prefetch"]))
    return make(*args, **kwargs)

  monkeypatch.setattr(pipeline, "make_eval_iterator", spy)
  return made


def test_decoupled_run_end_to_end_and_resume(data_dir, tmp_path):
  config = _config(boda_decoupled, data_dir)
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(config, workdir)
  for split in ("val", "target"):
    assert 0.0 <= result[split]["f1_macro"] <= 1.0 and result[split]["n"] > 0
  assert set(result["val_per_domain"]) == set(config.data.sources)
  assert result["stage1"]["val"]["n"] == result["val"]["n"]
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f)["target"] == result["target"]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  steps = [r["step"] for r in rows if "step" in r]
  assert steps == list(range(1, config.train.steps + 1))
  assert any(r.get("boda", 0) > 0 for r in rows)  # the BoDA term switched on at boda.start_step
  assert os.path.isdir(os.path.join(workdir, "stage2", "best"))
  # Predictions saved for the target are the ones scored.
  saved = np.load(os.path.join(workdir, "stage2", "target_predictions.npz"))
  assert saved["labels"].shape[0] == result["target"]["n"]
  # A rerun of the same command finds every stage finished and trains nothing more.
  again = trainer.train_and_evaluate(config, workdir)
  assert again["target"] == result["target"] and again["selected_step"] == result["selected_step"]
  rows_after = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  assert len([r for r in rows_after if "step" in r]) == len(steps)


def test_erm_run_writes_loadable_model(data_dir, tmp_path, monkeypatch):
  config = _config(erm, data_dir)
  config.data.num_threads = 2
  made, make = [], pipeline.make_train_dataset
  monkeypatch.setattr(pipeline, "make_train_dataset",
                      lambda *a, **kw: made.append((kw["num_threads"], kw["prefetch"])) or make(*a, **kw))
  eval_made = _spy_on_eval_iterators(monkeypatch)
  workdir = str(tmp_path / "erm")
  result = trainer.train_and_evaluate(config, workdir)
  # config.data.num_threads threads read the training batches and every evaluation's.
  assert made == [(2, 4)] and eval_made and set(eval_made) == {(2, 4)}
  bundle = checkpoint.load_for_inference(workdir)
  assert bundle.image_size == config.model.image_size and len(bundle.class_names) == 13
  z, logits = bundle.model.apply(bundle.variables, np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 13) and np.isfinite(logits).all()
  assert result["algorithm"] == "erm" and result["skipped_updates"] == 0


def test_state_and_iterator_checkpoint_round_trip(data_dir, tmp_path):
  config = tiny_config("boda")
  mesh = sharding.make_mesh()
  counts = tiny_counts()
  stage = build_stage(config, mesh=mesh, counts=counts)
  rng = np.random.default_rng(0)
  boda = stage.state.boda.replace(means=rng.normal(size=stage.state.boda.means.shape).astype(np.float32))
  state = sharding.replicate(stage.state.replace(boda=boda, step=np.int32(7)), mesh)

  domains = [MemoryDomain("mem", 20, 1), MemoryDomain("mem", 12, 2)]
  make = lambda: pipeline.make_train_iterator(domains, [np.arange(20), np.arange(12)], per_domain_batch=4, seed=3)
  it = make()
  for _ in range(5):
    next(it)
  ckpts = checkpoint.StateCheckpoints(str(tmp_path / "ckpt"), keep=2)
  ckpts.save(7, state, it)
  ckpts.wait()
  expected_next = next(it)

  fresh = build_stage(config, mesh=mesh, counts=counts).state
  it2 = make()
  restored = ckpts.restore(ckpts.latest_step(), fresh, it2)
  ckpts.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  got_next = next(it2)
  for k in expected_next:
    np.testing.assert_array_equal(got_next[k], expected_next[k])


def test_resume_with_another_number_of_worker_processes_reads_the_same_batches(data_dir, tmp_path, caplog):
  # grain's saved iterator state has a layout per worker count: restoring it into a reader with another
  # config.data.num_workers failed inside grain. The reader restarts at the checkpoint's step instead.
  config = _config(erm, data_dir)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  ckpts = checkpoint.StateCheckpoints(os.path.join(workdir, "checkpoints"))
  assert ckpts.reader_of(4) == {"num_workers": 0, "origin": 0}
  ckpts.close()
  rows = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  for name in ("checkpoints/4", "best", "metrics.json"):  # back to the checkpoint at step 2, as if killed after it
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

  config.data.num_workers = 1
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(config, workdir)
  assert "holds a run made with another config" in caplog.text and "config.data.num_workers: 0 -> 1" in caplog.text
  assert "reading restarts at step 2 from the step alone" in caplog.text
  again = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  losses = lambda rs: [(r["step"], r["ce"]) for r in rs if "step" in r]
  assert losses(again) == losses(rows)  # steps 3 and 4 saw the same batches
  ckpts = checkpoint.StateCheckpoints(os.path.join(workdir, "checkpoints"))
  assert ckpts.reader_of(4) == {"num_workers": 1, "origin": 2}
  ckpts.close()


def test_resume_restores_the_saved_reader_when_it_is_the_same(data_dir, tmp_path):
  config = _config(erm, data_dir)
  ckpts = checkpoint.StateCheckpoints(str(tmp_path / "checkpoints"), keep=3)
  assert trainer._train_reader(config, ckpts, None) == ({"num_workers": 0, "origin": 0}, False)
  state = {"w": np.zeros(2, np.float32)}
  for step, reader in ((3, None), (5, {"num_workers": 0, "origin": 3}), (7, {"num_workers": 2, "origin": 0})):
    ckpts.save(step, state, None, reader=reader)
  ckpts.wait()
  assert trainer._train_reader(config, ckpts, 3) == ({"num_workers": 0, "origin": 0}, True)  # older checkpoints
  assert trainer._train_reader(config, ckpts, 5) == ({"num_workers": 0, "origin": 3}, True)
  assert trainer._train_reader(config, ckpts, 7) == ({"num_workers": 0, "origin": 7}, False)
  ckpts.close()


def test_config_validation_names_the_field(data_dir):
  config = _config(erm, data_dir)
  config.data.target = config.data.sources[0]
  with pytest.raises(ValueError, match="config.data.target"):
    trainer.validate_config(config)
  config = _config(boda_decoupled, data_dir)
  config.data.sources = ("synthetic_wbc/matek19_like",)
  with pytest.raises(ValueError, match="at least two"):
    trainer.validate_config(config)
  config = _config(erm, data_dir)
  config.init.checkpoint = "/nonexistent/weights.npz"
  with pytest.raises(FileNotFoundError, match="config.init.checkpoint"):
    trainer.validate_config(config)


def test_boda_refresh_schedule():
  config = boda_decoupled.get_config("paper")  # start 500, every 120
  due = [s for s in range(0, 800) if trainer.boda_refresh_due(s, config)]
  assert due == [480, 600, 720]


@pytest.mark.parametrize("module", ["boda", "boda_mahalanobis"])
def test_boda_refresh_matches_direct_statistics(module, monkeypatch):
  from wbcdg_jax.experiment import ExperimentData
  from wbcdg_jax.train_state import count_pairs

  config = tiny_config(module)
  # 4 + 2 batches (the last of each domain padded): more than trainer.EVAL_IN_FLIGHT, so the pass also waits for
  # queued batches, and the first batch's moments (the running total) are donated to the second's sum.
  config.data.eval_batch = 4
  assert 4 + 2 > trainer.EVAL_IN_FLIGHT
  # 5 threads read 5 batches at once (so their results arrive out of order, which grain puts back in order).
  config.data.num_threads = 5
  made = _spy_on_eval_iterators(monkeypatch)
  mesh = sharding.make_mesh()
  domains = [MemoryDomain(name, n, seed, image_size=32, num_classes=4) for name, n, seed in (("a", 13, 1), ("b", 9, 2))]
  train_idx = [np.arange(0, 13, 1), np.arange(1, 9)]
  data = ExperimentData(domains, train_idx, train_idx, None, np.zeros((0,), np.int64))
  counts = count_pairs(data.train_labels(), 13)
  stage = build_stage(config, mesh=mesh, counts=counts)
  state = trainer.refresh_boda(stage.state, stage.eval_fn, stage.moments_fn, data, config=config, mesh=mesh)
  assert bool(state.boda.initialized)
  assert made == [(5, 5), (5, 5)]  # one iterator per source domain, config.data.num_threads threads each
  variables = {"params": stage.state.params, "batch_stats": stage.state.batch_stats}
  for d, (dom, idx) in enumerate(zip(domains, train_idx)):
    images = np.stack([dom.source[i]["image"] for i in idx])
    z, _ = stage.eval_fn(variables["params"], variables["batch_stats"], images[: len(idx) // 1])
    z = np.asarray(z)
    for c in np.unique(dom.labels[idx]):
      expected = z[dom.labels[idx] == c].mean(0)
      np.testing.assert_allclose(np.asarray(state.boda.means[d, c]), expected, rtol=1e-4, atol=1e-5)
  if module == "boda_mahalanobis":
    assert state.boda.precision.shape == state.boda.means.shape and np.isfinite(state.boda.precision).all()


@pytest.mark.parametrize("read_threads", [1, 5])
def test_predict_split_keeps_the_order_of_the_indices_over_padded_batches(read_threads, monkeypatch):
  made = _spy_on_eval_iterators(monkeypatch)
  config = tiny_config("erm")
  mesh = sharding.make_mesh()
  domain = MemoryDomain("a", 11, 3, image_size=32, num_classes=4)
  stage = build_stage(config, mesh=mesh, counts=tiny_counts())
  params, batch_stats = stage.state.params, stage.state.batch_stats
  indices = np.asarray([7, 2, 9, 0, 10, 4, 4, 1, 6])  # out of order, one repeated; batches of 4: 4, 4, 1 + padding
  labels, logits = trainer.predict_split(stage.eval_fn, {"params": params, "batch_stats": batch_stats}, domain,
                                         indices, batch_size=4, mesh=mesh, read_threads=read_threads)
  assert made == [(read_threads, max(4, read_threads))]
  np.testing.assert_array_equal(labels, domain.labels[indices])
  _, expected = stage.eval_fn(params, batch_stats, np.stack([domain.source[i]["image"] for i in indices] +
                                                            [np.zeros((32, 32, 3), np.uint8)] * 3))
  np.testing.assert_allclose(logits, np.asarray(expected)[:9], rtol=1e-5, atol=1e-5)


def _diverging_config(data_dir):
  # lr 1e30: step 0 moves every weight by about 1e30 (still finite), so step 1's forward pass overflows.
  config = _config(erm, data_dir)
  config.optim.lr = 1e30
  config.train.steps = 4
  config.train.checkpoint_every = 1
  return config


def test_nonfinite_loss_stops_the_run_naming_step_terms_and_checkpoint(data_dir, tmp_path):
  config = _diverging_config(data_dir)
  workdir = str(tmp_path / "diverged")
  with pytest.raises(trainer.NonFiniteLossError) as err:
    trainer.train_and_evaluate(config, workdir)
  message = str(err.value)
  assert "at step 1" in message and "'ce': nan" in message and "'total': nan" in message
  assert f"Last good checkpoint: step 1 in {os.path.join(workdir, 'checkpoints')}" in message
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_nonfinite_step_stops_the_run_before_a_checkpoint_between_log_rows(data_dir, tmp_path):
  # Log rows every 4 steps, checkpoints every step: step 1 diverges, and the checkpoint after step 2 must not be
  # kept (a rerun of the command would resume from it, past the step that should have stopped the run).
  config = _diverging_config(data_dir)
  config.train.log_every = 4
  workdir = str(tmp_path / "diverged")
  with pytest.raises(trainer.NonFiniteLossError, match="at step 1: .* Last good checkpoint: step 1 in"):
    trainer.train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  with pytest.raises(trainer.NonFiniteLossError, match="at step 1"):  # and the rerun stops again
    trainer.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_parameters_that_overflow_are_never_saved(data_dir, tmp_path, on_nonfinite):
  # lr 1e39 is inf in float32: step 0's gradients are finite, its update is not. Unchecked (the default), the
  # step is kept, and the trainer stops before checkpointing the parameters, whatever the policy.
  config = _config(erm, data_dir)
  assert not config.train.check_updated_params
  config.optim.lr = 1e39
  config.train.steps, config.train.checkpoint_every, config.train.on_nonfinite = 4, 1, on_nonfinite
  workdir = str(tmp_path / "overflow")
  with pytest.raises(trainer.NonFiniteLossError, match="not finite after step 1 .* Last good checkpoint: none yet"):
    trainer.train_and_evaluate(config, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert not os.path.isdir(checkpoints) or not os.listdir(checkpoints)
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_nonfinite_updates_are_skipped_and_counted_when_configured(data_dir, tmp_path):
  config = _diverging_config(data_dir)
  config.train.on_nonfinite = "skip"
  result = trainer.train_and_evaluate(config, str(tmp_path / "skipping"))
  assert result["skipped_updates"] == config.train.steps - 1  # every update after the first diverged
  for split in ("val", "target"):
    assert 0.0 <= result[split]["f1_macro"] <= 1.0


def test_run_with_o_major_kernels_resumes_from_a_checkpoint(data_dir, tmp_path):
  # The state's convolution kernels live output-channel-major on the device (train.o_major_kernels); a resumed
  # run restores the checkpoint into that layout and ends where the uninterrupted run did.
  config = _config(erm, data_dir)
  config.train.o_major_kernels = "true"
  config.train.keep_checkpoints = 3
  workdir = str(tmp_path / "o_major")
  result = trainer.train_and_evaluate(config, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  last = os.path.join(ckpt_dir, str(config.train.steps))
  assert os.path.isdir(last) and os.path.isdir(os.path.join(ckpt_dir, str(config.train.checkpoint_every)))
  final = checkpoint.load_for_inference(workdir).variables
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(last)  # as if killed before the last checkpoint: resume from the one before
  again = trainer.train_and_evaluate(config, workdir)
  assert again["target"] == result["target"] and again["selected_step"] == result["selected_step"]
  assert os.path.isdir(last)
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load_for_inference(workdir).variables, final)
