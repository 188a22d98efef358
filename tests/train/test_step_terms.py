"""How the composed step wires two terms: the DANN gradient reversal and the BoDA start gate.

Both are checked on `train_step._losses` with fixed features z and logits instead of a compiled ResNet step: the
end-to-end step tests only look at loss values, which an identity in place of `gradient_reversal` or a gate that
ignores `boda_start_step` leaves unchanged, so they cannot catch those regressions; gradients with respect to z
can, in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax import losses
from wbcdg_jax.algorithms import LossSpec
from wbcdg_jax.train_state import TrainState
from wbcdg_jax.train_step import _losses

K, C, D, B = 2, 4, 8, 12  # domains, classes, feature width, batch (B // K rows per domain)
DANN_WEIGHT = 0.7
DANN_STEP = 30
BODA_WEIGHT = 0.1
BODA_START = 10


def _inputs(seed: int = 0):
  """Fixed z [B, D], logits [B, C], a domain-blocked batch, counts N [K, C] (all pairs present) and step keys."""
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(B, C)), jnp.float32)
  batch = {"label": jnp.asarray(rng.integers(0, C, B), jnp.int32),
           "domain": jnp.asarray(np.repeat(np.arange(K), B // K), jnp.int32),
           "mask": jnp.ones(B, bool)}
  counts = jnp.asarray(rng.integers(3, 30, size=(K, C)), jnp.float32)
  keys = {"dropout": jax.random.key(0), "disc_dropout": jax.random.key(1)}
  return z, logits, batch, counts, keys


def _state(step: int, counts, *, boda=None, disc_params=None) -> TrainState:
  # _losses reads only the step, the BoDA statistics, the discriminator parameters and the pair counts.
  return TrainState(step=jnp.asarray(step, jnp.int32), params=None, batch_stats=None, opt_state=None, boda=boda,
                    disc_params=disc_params, pair_counts=counts)


def _expected_lambda(spec: LossSpec, step: int) -> float:
  """lambda_p written out here (not via losses.ganin_lambda), so a wrong schedule in the library shows too."""
  if spec.dann_schedule == "constant":
    return spec.dann_lambda
  p = step / (spec.total_steps - 1)
  return 2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0


def _dann_grads(conditional: bool, schedule: str):
  """Gradients of the step's total loss w.r.t. z and the discriminator parameters, and what they should be.

  The logits are fixed, so the cross-entropy contributes nothing to d total / dz: all of it comes from the
  discriminator, and reversal must turn it into -lambda_p * dann_weight * d(dann)/dz, while the discriminator
  itself descends +dann_weight * d(dann)/d params. The reference loss is the discriminator's loss on z without
  reversal; for CDANN the discriminator sees z plus a class embedding (labels passed in) and the rows carry the
  class-balanced weights, so the embedding's gradient is part of the discriminator's and must not be reversed.
  """
  z, logits, batch, counts, keys = _inputs()
  disc_labels = batch["label"] if conditional else None
  disc = losses.DomainDiscriminator(num_domains=K, width=16, num_classes=C if conditional else None)
  disc_params = disc.init(jax.random.key(2), z, disc_labels, train=False)["params"]
  spec = LossSpec(num_domains=K, num_classes=C, total_steps=101, dann_weight=DANN_WEIGHT,
                  dann_conditional=conditional, dann_schedule=schedule, dann_lambda=0.25)
  state = _state(DANN_STEP, counts, disc_params=disc_params)

  def total(zz, pp):
    return _losses(zz, logits, pp, state, batch, keys, disc=disc, spec=spec)[0]

  grad_z, grad_disc = jax.grad(total, argnums=(0, 1))(z, disc_params)
  weights = losses.cdann_class_weights(batch["label"], batch["domain"], counts) if conditional else None

  def dann(zz, pp):
    disc_logits = disc.apply({"params": pp}, zz, disc_labels, train=False)  # dropout 0: train=True is the same
    return losses.domain_adversarial_loss(disc_logits, batch["domain"], class_weights=weights)

  ref_z, ref_disc = jax.grad(dann, argnums=(0, 1))(z, disc_params)
  # A vanishing reference gradient would make every comparison pass; for CDANN, so would an unused embedding.
  assert float(jnp.max(jnp.abs(ref_z))) > 1e-3
  if conditional:
    assert float(jnp.max(jnp.abs(ref_disc["class_embedding"]["embedding"]))) > 1e-3
  return (grad_z, grad_disc), (ref_z, ref_disc), _expected_lambda(spec, DANN_STEP)


def _close(a, b) -> bool:
  return all(np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("schedule", ["ganin", "constant"])
@pytest.mark.parametrize("conditional", [False, True], ids=["dann", "cdann"])
def test_dann_reverses_the_encoder_gradient_only(conditional, schedule):
  (grad_z, grad_disc), (ref_z, ref_disc), lam = _dann_grads(conditional, schedule)
  expected_z = -lam * DANN_WEIGHT * ref_z
  expected_disc = jax.tree.map(lambda g: DANN_WEIGHT * g, ref_disc)
  np.testing.assert_allclose(grad_z, expected_z, rtol=1e-5, atol=1e-7)
  assert jax.tree.structure(grad_disc) == jax.tree.structure(expected_disc)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grad_disc, expected_disc)


@pytest.mark.parametrize("conditional", [False, True], ids=["dann", "cdann"])
def test_dann_check_fails_without_reversal(conditional, monkeypatch):
  """The check above has teeth: with the reversal replaced by the identity (the step looks it up as
  `losses.gradient_reversal` at trace time) the encoder gradient has the wrong sign and scale, while the
  discriminator's, which never passes through the reversal, is unchanged."""
  monkeypatch.setattr(losses, "gradient_reversal", lambda x, lambda_: x)
  (grad_z, grad_disc), (ref_z, ref_disc), lam = _dann_grads(conditional, "ganin")
  assert not _close(grad_z, -lam * DANN_WEIGHT * ref_z)
  np.testing.assert_allclose(grad_z, DANN_WEIGHT * ref_z, rtol=1e-5, atol=1e-7)
  assert _close(grad_disc, jax.tree.map(lambda g: DANN_WEIGHT * g, ref_disc))


def _boda_stats(counts, *, initialized: bool) -> losses.BodaStats:
  """Statistics after one refresh from features unlike z (so the BoDA term is far from 0), or never refreshed."""
  stats = losses.init_boda_stats(K, C, D, counts)
  if not initialized:
    return stats
  rng = np.random.default_rng(1)
  labels = np.tile(np.arange(C), 2 * K)  # every (domain, class) pair seen twice
  domains = np.repeat(np.arange(K), 2 * C)
  feats = rng.normal(size=(labels.size, D)) + 3.0 * rng.normal(size=(K, C, D))[domains, labels]
  moments = losses.pair_moments(jnp.asarray(feats, jnp.float32), labels, domains, num_domains=K, num_classes=C)
  return losses.update_boda_stats(stats, moments, momentum=0.9)


def _boda_at(step: int, *, initialized: bool):
  """(BoDA part, d part / dz, total, d total / dz, CE part, the ungated BoDA loss) of the step at `step`.

  BoDA alone (no CORAL) with fixed logits, so d total / dz is the gated BoDA gradient and nothing else.
  """
  z, logits, batch, counts, keys = _inputs()
  stats = _boda_stats(counts, initialized=initialized)
  spec = LossSpec(num_domains=K, num_classes=C, total_steps=100, boda_weight=BODA_WEIGHT, boda_start_step=BODA_START)
  state = _state(step, counts, boda=stats)

  def boda_part(zz):
    parts = _losses(zz, logits, None, state, batch, keys, disc=None, spec=spec)[1]
    return parts["boda"], parts

  (boda, parts), grad_boda = jax.value_and_grad(boda_part, has_aux=True)(z)
  grad_total = jax.grad(lambda zz: _losses(zz, logits, None, state, batch, keys, disc=None, spec=spec)[0])(z)
  ungated = losses.boda_loss(z, batch["label"], batch["domain"], stats.means, stats.counts, mask=batch["mask"])
  return boda, grad_boda, parts["total"], grad_total, parts["ce"], ungated


@pytest.mark.parametrize("step", [0, BODA_START - 1])
def test_boda_is_off_before_its_start_step(step):
  boda, grad_boda, total, grad_total, ce, ungated = _boda_at(step, initialized=True)
  assert float(ungated) > 0.1  # the gate, not the statistics, is what zeroes the term
  assert float(boda) == 0.0 and float(total) == float(ce)
  np.testing.assert_array_equal(grad_boda, 0.0)
  np.testing.assert_array_equal(grad_total, 0.0)


@pytest.mark.parametrize("step", [BODA_START, BODA_START + 1, 10 * BODA_START])
def test_boda_is_on_from_its_start_step(step):
  boda, grad_boda, total, grad_total, ce, ungated = _boda_at(step, initialized=True)
  np.testing.assert_allclose(boda, ungated, rtol=1e-6)
  assert float(boda) > 0.1
  np.testing.assert_allclose(total, ce + BODA_WEIGHT * boda, rtol=1e-6)
  assert float(jnp.max(jnp.abs(grad_boda))) > 1e-3 and bool(jnp.all(jnp.isfinite(grad_boda)))
  np.testing.assert_allclose(grad_total, BODA_WEIGHT * grad_boda, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("step", [BODA_START, 10 * BODA_START])
def test_boda_is_off_until_the_statistics_are_refreshed(step):
  """Never-refreshed statistics (zero centroids) still give a nonzero loss, which the gate must drop."""
  boda, grad_boda, total, grad_total, ce, ungated = _boda_at(step, initialized=False)
  assert float(ungated) > 0.1
  assert float(boda) == 0.0 and float(total) == float(ce)
  np.testing.assert_array_equal(grad_boda, 0.0)
  np.testing.assert_array_equal(grad_total, 0.0)
