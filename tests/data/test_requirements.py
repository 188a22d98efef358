"""The scikit-learn pin in pyproject.toml allows no version without the splitter arguments folds.py passes."""

import inspect
import os
import re
import tomllib

from sklearn import model_selection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# data_pipelines/folds.py calls GroupKFold(n_splits, shuffle=True, random_state=seed): scikit-learn 1.6 added
# shuffle and random_state to GroupKFold (1.5's takes n_splits alone).
GROUP_KFOLD_SHUFFLE_SINCE = (1, 6)


def _minimum(requirement: str) -> tuple[int, ...]:
  match = re.search(r">=\s*(\d+(?:\.\d+)*)", requirement)
  assert match, f"pyproject.toml: {requirement!r} has no '>=' lower bound"
  return tuple(int(part) for part in match.group(1).split("."))


def test_scikit_learn_pin_has_group_kfold_shuffle():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
  (requirement,) = [d for d in dependencies if re.match(r"scikit-learn\b", d)]
  assert _minimum(requirement) >= GROUP_KFOLD_SHUFFLE_SINCE, requirement
  # The installed version (the one the tests run) has the arguments too.
  assert {"shuffle", "random_state"} <= set(inspect.signature(model_selection.GroupKFold).parameters)
