"""Which examples each training step reads: a pure function of (seed, domain, step).

Training batches are domain-balanced: at global step t every source domain d contributes a block of
`per_domain_batch` examples drawn from its training indices. Because the choice depends only on (seed, d, t), any
step can be produced directly (random access), which is what makes the grain pipeline's state exactly restorable
and lets several worker processes or hosts compute disjoint parts of the same step without talking to each other.

Modes:
* 'uniform': every domain walks through its own stream of epochs; epoch e is a permutation of the domain's training
  indices seeded by (seed, d, e), so each domain is reshuffled independently every epoch and every example is seen
  once per epoch of that domain (domains of different sizes wrap around at different steps).
* 'class_balanced' (decoupled cRT stage, REFERENCE.md section 1): draws with replacement with per-example
  probability 1 / (N[d, c] * C_d), N[d, c] the number of training examples of class c in d and C_d the number of
  classes present in d; i.e. a class uniformly among the present ones, then an example uniformly within it.
  Draws of step t use a generator seeded by (seed, d, t).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

SAMPLING_MODES = ("uniform", "class_balanced")
# Distinct first words of the seed sequences so the two modes never share random streams.
_UNIFORM_TAG = 0x5EED0001
_BALANCED_TAG = 0x5EED0002


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
  """Per-example sampling probabilities of class-balanced sampling within one domain.

  Args:
    labels: int [n] class of every training example of the domain.

  Returns:
    float64 [n]: 1 / (count of the example's class * number of distinct classes); sums to 1.
  """
  labels = np.asarray(labels)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  return 1.0 / (counts[inverse].astype(np.float64) * len(classes))


@functools.lru_cache(maxsize=64)
def _epoch_permutation(seed: int, domain: int, epoch: int, n: int) -> np.ndarray:
  """int64 [n] permutation of range(n) for one domain's epoch (cached: consecutive steps reuse it)."""
  perm = np.random.default_rng((_UNIFORM_TAG, seed, domain, epoch)).permutation(n)
  perm.setflags(write=False)  # Shared through the cache; nobody may modify it.
  return perm


class StepSampler:
  """Maps a global step to the source indices of every domain's block of the domain-balanced batch.

  Picklable (plain numpy arrays and ints) so grain worker processes can carry it.
  """

  def __init__(
      self,
      indices: Sequence[np.ndarray],
      labels: Sequence[np.ndarray],
      *,
      per_domain_batch: int,
      seed: int,
      sampling: str = "uniform",
  ):
    """Builds the sampler.

    Args:
      indices: per domain d, int [n_d] training indices into that domain's source (n_d >= 1).
      labels: per domain d, int [n_d] class of each of those indices (same order as `indices[d]`).
      per_domain_batch: b, examples per domain per step (>= 1).
      seed: non-negative int seed.
      sampling: 'uniform' or 'class_balanced' (see module docstring).
    """
    if sampling not in SAMPLING_MODES:
      raise ValueError(f"StepSampler: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if per_domain_batch < 1:
      raise ValueError(f"StepSampler: per_domain_batch must be >= 1, got {per_domain_batch}")
    if seed < 0:
      raise ValueError(f"StepSampler: seed must be non-negative, got {seed}")
    if len(indices) != len(labels) or not indices:
      raise ValueError(f"StepSampler: need one labels array per indices array (got {len(indices)} indices, "
                       f"{len(labels)} labels, at least one domain)")
    self.indices = [np.asarray(i, np.int64) for i in indices]
    self.per_domain_batch = int(per_domain_batch)
    self.seed = int(seed)
    self.sampling = sampling
    self._by_class = []  # per domain: (indices sorted by class, start offset of each class, class counts)
    for d, (idx, lab) in enumerate(zip(self.indices, labels)):
      lab = np.asarray(lab)
      if idx.ndim != 1 or idx.size == 0 or lab.shape != idx.shape:
        raise ValueError(f"StepSampler: domain {d}: need non-empty 1-D indices and labels of the same shape, "
                         f"got {idx.shape} and {lab.shape}")
      order = np.argsort(lab, kind="stable")
      _, counts = np.unique(lab, return_counts=True)
      starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
      self._by_class.append((idx[order], starts.astype(np.int64), counts.astype(np.int64)))

  @property
  def num_domains(self) -> int:
    return len(self.indices)

  def domain_block(self, step: int, domain: int) -> np.ndarray:
    """int64 [per_domain_batch] source indices of `domain`'s block at global step `step` (>= 0)."""
    if step < 0:
      raise ValueError(f"StepSampler: step must be >= 0, got {step}")
    if self.sampling == "uniform":
      return self._uniform_block(step, domain)
    return self._balanced_block(step, domain)

  def step_indices(self, step: int) -> np.ndarray:
    """int64 [K, per_domain_batch] source indices of every domain's block at global step `step`."""
    return np.stack([self.domain_block(step, d) for d in range(self.num_domains)])

  def _uniform_block(self, step: int, domain: int) -> np.ndarray:
    idx = self.indices[domain]
    n = idx.size
    b = self.per_domain_batch
    positions = step * b + np.arange(b, dtype=np.int64)  # Positions in the domain's endless epoch stream.
    epochs, offsets = np.divmod(positions, n)
    out = np.empty(b, np.int64)
    for e in np.unique(epochs):  # One or two epochs (more only when b > n).
      sel = epochs == e
      out[sel] = idx[_epoch_permutation(self.seed, domain, int(e), n)[offsets[sel]]]
    return out

  def _balanced_block(self, step: int, domain: int) -> np.ndarray:
    sorted_idx, starts, counts = self._by_class[domain]
    rng = np.random.default_rng((_BALANCED_TAG, self.seed, domain, step))
    cls = rng.integers(0, counts.size, size=self.per_domain_batch)
    member = rng.integers(0, counts[cls])  # Uniform within the drawn class.
    return sorted_idx[starts[cls] + member]
