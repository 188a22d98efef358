"""Tests of data_pipelines/folds.py: stratified, grouped, seeded k-fold splits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipelines import folds


def _labels(counts):
  """Shuffled int64 labels with counts[c] members of class c."""
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
  return np.random.default_rng(123).permutation(labels)


def _all_folds(labels, groups=None, num_folds=5, seed=0):
  return [folds.stratified_folds(labels, groups, num_folds=num_folds, fold=k, seed=seed) for k in range(num_folds)]


def test_folds_are_disjoint_covering_and_partition_validation():
  labels = _labels([50, 30, 20, 7])
  n = labels.size
  splits = _all_folds(labels)
  for train, val in splits:
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert train.dtype == np.int64 and val.dtype == np.int64
  # Every example validates in exactly one fold.
  np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in splits])), np.arange(n))


def test_stratified_per_class_counts_per_fold():
  counts = [50, 30, 20, 7]
  labels = _labels(counts)
  for _, val in _all_folds(labels):
    for c, n_c in enumerate(counts):
      got = int(np.sum(labels[val] == c))
      assert n_c // 5 <= got <= -(-n_c // 5), (c, got)


def test_reproducible_for_seed_and_different_for_other_seed():
  labels = _labels([40, 25, 10])
  a = folds.stratified_folds(labels, num_folds=5, fold=2, seed=7)
  b = folds.stratified_folds(labels, num_folds=5, fold=2, seed=7)
  c = folds.stratified_folds(labels, num_folds=5, fold=2, seed=8)
  np.testing.assert_array_equal(a[1], b[1])
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], c[1])


def _grouped(counts, dup_every=4):
  """Labels and groups where every `dup_every`-th example duplicates the previous file (same group, same label)."""
  labels = _labels(counts)
  order = np.argsort(labels, kind="stable")
  groups = np.empty(labels.size, dtype=object)
  gid = 0
  for pos, i in enumerate(order):
    if pos % dup_every == dup_every - 1 and labels[order[pos - 1]] == labels[i]:
      groups[i] = groups[order[pos - 1]]  # Byte-identical duplicate of the previous example.
    else:
      groups[i] = f"sha{gid:04d}"
      gid += 1
  return labels, groups.astype(str)


def test_groups_never_split_and_still_stratified():
  counts = [60, 40, 25]
  labels, groups = _grouped(counts)
  assert len(np.unique(groups)) < labels.size  # The fixture really has duplicates.
  splits = _all_folds(labels, groups)
  for train, val in splits:
    assert np.intersect1d(groups[train], groups[val]).size == 0
    for c, n_c in enumerate(counts):
      got = int(np.sum(labels[val] == c))
      assert abs(got - n_c / 5) <= 3, (c, got)
  np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in splits])), np.arange(labels.size))


def test_grouped_reproducible_and_seed_dependent():
  labels, groups = _grouped([60, 40, 25])
  a = folds.stratified_folds(labels, groups, fold=0, seed=1)[1]
  b = folds.stratified_folds(labels, groups, fold=0, seed=1)[1]
  c = folds.stratified_folds(labels, groups, fold=0, seed=2)[1]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("with_groups", [False, True])
def test_rare_class_does_not_crash_and_validates_in_some_folds(with_groups):
  labels = _labels([30, 20, 2])  # Class 2 has fewer members than folds.
  groups = np.array([f"g{i}" for i in range(labels.size)]) if with_groups else None
  splits = _all_folds(labels, groups)
  folds_with_rare = [k for k, (_, val) in enumerate(splits) if np.any(labels[val] == 2)]
  assert len(folds_with_rare) == 2  # Each of its 2 members validates in exactly one fold.
  assert sum(int(np.sum(labels[v] == 2)) for _, v in splits) == 2


def test_all_classes_rare_falls_back_to_unstratified():
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int64)
  splits = _all_folds(labels, num_folds=5)
  np.testing.assert_array_equal(np.sort(np.concatenate([v for _, v in splits])), np.arange(8))


def test_errors_name_the_problem():
  labels = _labels([10, 10])
  with pytest.raises(ValueError, match="fold must be in"):
    folds.stratified_folds(labels, fold=5, seed=0)
  with pytest.raises(ValueError, match="num_folds"):
    folds.stratified_folds(labels, num_folds=1, fold=0, seed=0)
  with pytest.raises(ValueError, match="3 groups cannot fill 5 folds"):
    folds.stratified_folds(labels, np.array(["a", "b", "c"] * 6 + ["a", "b"]), fold=0, seed=0)
  with pytest.raises(ValueError, match="groups shape"):
    folds.stratified_folds(labels, np.array(["a"]), fold=0, seed=0)


@dataclasses.dataclass(frozen=True)
class _Domain:
  name: str
  labels: np.ndarray
  groups: np.ndarray


def test_split_domain_and_target_test_indices():
  labels, groups = _grouped([30, 20, 10])
  dom = _Domain("toy", labels, groups)
  split = folds.split_domain(dom, num_folds=5, fold=3, seed=4)
  train, val = folds.stratified_folds(labels, groups, num_folds=5, fold=3, seed=4)
  assert split.name == "toy"
  np.testing.assert_array_equal(split.train, train)
  np.testing.assert_array_equal(split.val, val)
  np.testing.assert_array_equal(folds.target_test_indices(dom, fold=3, seed=4), val)
  np.testing.assert_array_equal(folds.target_test_indices(dom, fold=3, seed=4, use_all=True),
                                np.arange(labels.size))
  ungrouped = folds.split_domain(dom, num_folds=5, fold=3, seed=4, use_groups=False)
  np.testing.assert_array_equal(ungrouped.val, folds.stratified_folds(labels, num_folds=5, fold=3, seed=4)[1])
