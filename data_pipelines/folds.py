"""Seeded, stratified k-fold splits of one domain's examples (indices into its record order).

Every domain is stored whole (a single TFDS split holding all images); folds are made here, after loading, so the
same stored data serves every fold and seed.

* Source (training) domains: fold `k` of `num_folds` is the validation part, the other folds are the training part
  (training-domain validation, REFERENCE.md section 1).
* Unseen target domain: its fold-`k` validation part is its test split (so a target evaluated at fold k sees the
  same examples that would be its validation part if it were a source), or, with `use_all=True`, all of it.

Grouping: examples that share a `group` (sha1 of the source file bytes; byte-identical files) are always on the
same side of a split, so a duplicated image can never be in training and validation at once.

Rare classes: a class with fewer members than `num_folds` does not crash the split. Each of its members is still
assigned to exactly one fold, so the class is in the validation part of only some folds (and, in those folds,
possibly absent from training). scikit-learn's warning about it is silenced here because this is intended. If
*every* class has fewer members than `num_folds` (tiny domains), stratification is impossible and the split falls
back to an unstratified (Group)KFold with the same seed.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
from sklearn import model_selection


def stratified_folds(
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    num_folds: int = 5,
    fold: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Splits examples into a training part and the validation fold `fold`.

  Uses scikit-learn's StratifiedGroupKFold when `groups` is given (every group stays on one side) and
  StratifiedKFold otherwise, both with shuffle=True and random_state=seed, so the split is a pure function of
  (labels, groups, num_folds, fold, seed).

  Args:
    labels: int [N] class index of every example (record order).
    groups: [N] group id (any hashable dtype, e.g. sha1 strings) or None for "every example is its own group".
    num_folds: number of folds (>= 2).
    fold: which fold is the validation part, 0 <= fold < num_folds.
    seed: seed of the shuffle.

  Returns:
    (train_idx, val_idx): sorted int64 arrays of positions into `labels`, disjoint, together covering 0..N-1.

  Raises:
    ValueError: bad num_folds/fold, mismatched shapes, or fewer examples (groups) than folds.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"stratified_folds: labels must be 1-D, got shape {labels.shape}")
  n = labels.shape[0]
  if num_folds < 2:
    raise ValueError(f"stratified_folds: num_folds must be >= 2, got {num_folds}")
  if not 0 <= fold < num_folds:
    raise ValueError(f"stratified_folds: fold must be in [0, {num_folds}), got {fold}")
  if groups is not None:
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
      raise ValueError(f"stratified_folds: groups shape {groups.shape} != labels shape {labels.shape}")
    num_units = len(np.unique(groups))
  else:
    num_units = n
  if num_units < num_folds:
    raise ValueError(
        f"stratified_folds: {num_units} {'groups' if groups is not None else 'examples'} cannot fill "
        f"{num_folds} folds; use fewer folds")

  splitter = _make_splitter(labels, groups, num_folds, seed)
  x = np.zeros((n, 1), np.uint8)  # scikit-learn wants an X; only its length is used.
  with warnings.catch_warnings():
    # Intended: rare classes are spread over fewer folds than num_folds (see module docstring).
    warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
    for k, (train_idx, val_idx) in enumerate(splitter.split(x, labels, groups)):
      if k == fold:
        return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)
  raise AssertionError("unreachable: scikit-learn produced fewer folds than requested")


def _make_splitter(labels: np.ndarray, groups: np.ndarray | None, num_folds: int, seed: int) -> Any:
  """Picks the scikit-learn splitter (stratified unless no class can fill every fold)."""
  _, counts = np.unique(labels, return_counts=True)
  stratify = bool(np.any(counts >= num_folds))
  if groups is not None:
    if stratify:
      return model_selection.StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return model_selection.GroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  if stratify:
    return model_selection.StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
  return model_selection.KFold(n_splits=num_folds, shuffle=True, random_state=seed)


@dataclasses.dataclass(frozen=True)
class DomainSplit:
  """Train/validation indices of one domain (positions in its record order, i.e. indices into `.source`).

  Attributes:
    name: the domain's dataset name.
    train: int64 [N_train] sorted.
    val: int64 [N_val] sorted (for an unseen target: its test indices).
  """
  name: str
  train: np.ndarray
  val: np.ndarray


def split_domain(
    domain: Any, *, num_folds: int = 5, fold: int, seed: int, use_groups: bool = True) -> DomainSplit:
  """Splits one source domain (a DomainData: .name, .labels int64 [N], .groups [N] str) into train / fold `fold`.

  Args:
    domain: DomainData-like object.
    num_folds, fold, seed: see `stratified_folds`.
    use_groups: keep examples with the same `.groups` value on one side (default; recommended).

  Returns:
    DomainSplit with train and val indices into `domain.source`.
  """
  groups = domain.groups if use_groups else None
  train, val = stratified_folds(domain.labels, groups, num_folds=num_folds, fold=fold, seed=seed)
  return DomainSplit(name=domain.name, train=train, val=val)


def target_test_indices(
    domain: Any, *, num_folds: int = 5, fold: int, seed: int, use_all: bool = False,
    use_groups: bool = True) -> np.ndarray:
  """Test indices of an unseen target domain.

  Args:
    domain: DomainData-like object (.labels int64 [N], .groups [N]).
    num_folds, fold, seed, use_groups: as in `split_domain`.
    use_all: if True return every index 0..N-1 (the whole target is the test set); otherwise the fold-`fold`
      validation part of the target's own split (the same examples it would validate on as a source).

  Returns:
    int64 [N_test] sorted indices into `domain.source`.
  """
  if use_all:
    return np.arange(len(domain.labels), dtype=np.int64)
  return split_domain(domain, num_folds=num_folds, fold=fold, seed=seed, use_groups=use_groups).val
