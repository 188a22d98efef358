"""Classification metrics from scikit-learn, with classes absent from a domain handled explicitly.

F1-macro averages only over the classes present in the evaluated domain's true labels (a class a domain lacks has
no defined recall; scoring it as 0 would silently punish every method equally and hide real differences). The
classes left out are listed next to every score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict:
  """Scores predictions of one evaluated split.

  Args:
    y_true, y_pred: int [N] class indices into `class_names`.
    class_names: the names of all C classes.

  Returns:
    dict with n, accuracy, f1_macro (over present classes), f1_micro, present_classes, absent_classes,
    per_class {name: precision, recall, f1, support} for present classes, and the C x C confusion matrix
    (rows = true class, raw counts).
  """
  y_true = np.asarray(y_true, np.int64)
  y_pred = np.asarray(y_pred, np.int64)
  num_classes = len(class_names)
  present = np.unique(y_true)
  if y_true.size == 0:
    raise ValueError("cannot score an empty split")
  p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
  return {
      "n": int(y_true.size),
      "accuracy": float(skm.accuracy_score(y_true, y_pred)),
      "f1_macro": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
      "f1_micro": float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
      "present_classes": [class_names[i] for i in present],
      "absent_classes": [n for i, n in enumerate(class_names) if i not in set(present.tolist())],
      "per_class": {class_names[c]: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                                     "support": int(s[j])} for j, c in enumerate(present)},
      "confusion": skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).tolist(),
  }
