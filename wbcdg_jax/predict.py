"""Classifying new cell images with a trained model: the library behind `launch/predict.py`.

Each image goes through the same steps as the training data: `data_pipelines.imaging.read_image` (any TIFF, JPEG,
PNG or BMP -> uint8 RGB), `crop_to_fov` (centre field of view of the run's `fov_um` at the user's `px_per_um`,
Lanczos-resampled to the run's stored size), then on the accelerator the evaluation preprocessing and forward
pass of training (`train_step.eval_outputs`: resize to the network's image size, ImageNet normalisation) and a
softmax. Batches have a fixed size (the last is padded) so the jitted function compiles once.

Unreadable files are reported, not fatal: each becomes a CSV row with an empty prediction and the reason in the
`error` column (so every input file is accounted for in one table), is printed to stderr, and is left out of the
differential count. Cells whose top probability is below `review_threshold` are flagged for review.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import glob
import os
import sys
from typing import Any, Callable, Iterable, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import imaging
from wbcdg_jax import xla_options

IMAGE_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp")
CSV_COLUMNS = ("file", "predicted_class", "probability", "top3", "review", "error")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The result for one file: `probabilities` float32 [C] (None if the file failed) or `error` (else None)."""

  file: str
  probabilities: np.ndarray | None = None
  error: str | None = None


def find_images(spec: str) -> list[str]:
  """Image files named by a folder (searched recursively, by extension) or a glob pattern ('**' recurses).

  Args:
    spec: a directory, a glob such as 'slides/**/*.tif', or a single file.

  Returns:
    Sorted paths. A folder yields only files with an image extension (case-insensitive: .tif .tiff .jpg .jpeg
    .png .bmp), so stray files such as .DS_Store are ignored; a glob yields every matching file.

  Raises:
    FileNotFoundError naming `spec` when nothing matches.
  """
  if os.path.isdir(spec):
    found = [os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
             if name.lower().endswith(IMAGE_EXTENSIONS)]
  else:
    found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
  if not found:
    raise FileNotFoundError(f"no image files found for --images={spec!r} (a folder is searched recursively for "
                            f"{', '.join(IMAGE_EXTENSIONS)}; a glob needs quotes to reach the program unexpanded)")
  return sorted(found)


def load_cell(path: str, *, px_per_um: float, fov_um: float, size: int) -> np.ndarray:
  """Reads one image and crops it like the training data: uint8 [size, size, 3] RGB.

  Raises:
    imaging.ImageReadError (or NotAnImageError) naming the file when it cannot be decoded.
  """
  return imaging.crop_to_fov(imaging.read_image(path), px_per_um=px_per_um, fov_um=fov_um, size=size)


def classify_batch(model: Any, variables: dict, images: jax.Array, *, image_size: int) -> jax.Array:
  """Eval-mode class probabilities: uint8 [B, s, s, 3] -> float32 [B, C] (softmax over the logits).

  Uses training's own evaluation path (`eval_outputs`: resize to `image_size` + ImageNet normalisation).
  """
  from wbcdg_jax import train_step  # local import: keeps `find_images` etc. usable without the model code

  _, logits = train_step.eval_outputs(variables["params"], variables["batch_stats"], images, model=model,
                                      image_size=image_size)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def input_size(bundle: Any) -> int:
  """Side of the crops fed to the model: the run's stored size (what its evaluation saw), else image_size."""
  return int(getattr(bundle, "stored_size", None) or bundle.image_size)


def make_classifier_fn(bundle: Any) -> Callable[[np.ndarray], np.ndarray]:
  """A jitted `images uint8 [B, s, s, 3] -> probabilities float32 [B, C]` for an InferenceBundle."""
  fn = jax.jit(functools.partial(classify_batch, bundle.model, image_size=int(bundle.image_size)),
               compiler_options=xla_options.compiler_options(jax.devices()[0].platform))
  variables = jax.device_put({"params": bundle.variables["params"],
                              "batch_stats": bundle.variables.get("batch_stats", {})})
  return lambda images: np.asarray(fn(variables, images))


def _read(path: str, **crop) -> tuple[np.ndarray | None, str | None]:
  try:
    return load_cell(path, **crop), None
  except (imaging.ImageReadError, ValueError, OSError) as e:
    return None, str(getattr(e, "reason", e))


def predict_files(bundle: Any, files: Sequence[str], *, px_per_um: float, batch_size: int = 64,
                  classifier_fn: Callable[[np.ndarray], np.ndarray] | None = None, num_threads: int = 4,
                  errors_to: TextIO | None = None) -> list[Prediction]:
  """Classifies image files in fixed-size batches; unreadable files are reported and skipped.

  Args:
    bundle: an InferenceBundle (model, variables, class_names, image_size, fov_um[, stored_size]).
    files: image paths.
    px_per_um: resolution of the images (pixels per micrometre), used to crop `bundle.fov_um`.
    batch_size: images per device call; the last batch is padded to this size.
    classifier_fn: optional precompiled function from `make_classifier_fn` (built here if None).
    num_threads: threads decoding images while the device works on the previous batch.
    errors_to: stream for one line per unreadable file (None: sys.stderr).

  Returns:
    One Prediction per file, in the order of `files`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not px_per_um > 0:
    raise ValueError(f"px_per_um must be positive, got {px_per_um}")
  size = input_size(bundle)
  classifier_fn = classifier_fn or make_classifier_fn(bundle)
  crop = dict(px_per_um=px_per_um, fov_um=float(bundle.fov_um), size=size)
  chunks = [list(files[i:i + batch_size]) for i in range(0, len(files), batch_size)]
  results: list[Prediction] = []
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    submit = lambda chunk: [pool.submit(_read, path, **crop) for path in chunk]
    pending = submit(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
      loaded = [f.result() for f in pending]
      pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []  # decode the next batch meanwhile
      good = [i for i, (image, _) in enumerate(loaded) if image is not None]
      batch = np.zeros((batch_size, size, size, 3), np.uint8)
      for row, i in enumerate(good):
        batch[row] = loaded[i][0]
      probs = classifier_fn(batch) if good else None
      by_index = {i: probs[row] for row, i in enumerate(good)}
      for i, path in enumerate(chunk):
        if i in by_index:
          results.append(Prediction(path, probabilities=np.asarray(by_index[i], np.float32)))
        else:
          results.append(Prediction(path, error=loaded[i][1]))
          print(f"skipped unreadable image {path}: {loaded[i][1]}", file=errors_to or sys.stderr)
  return results


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
  """The k most probable (class, probability) pairs, most probable first (ties: lower class index first)."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(class_names[i], float(probabilities[i])) for i in order]


def write_csv(predictions: Iterable[Prediction], path: str, class_names: Sequence[str], *,
              review_threshold: float) -> None:
  """Writes one row per file with columns CSV_COLUMNS.

  `probability` is the top class's softmax probability (4 decimals); `top3` is 'class:prob;class:prob;...';
  `review` is 'yes' when the probability is below `review_threshold`, else 'no'; failed files have empty
  prediction fields and the reason in `error`.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for p in predictions:
      if p.probabilities is None:
        writer.writerow([p.file, "", "", "", "", p.error])
        continue
      top = top_k(p.probabilities, class_names)
      writer.writerow([p.file, top[0][0], f"{top[0][1]:.4f}", ";".join(f"{c}:{q:.4f}" for c, q in top),
                       "yes" if top[0][1] < review_threshold else "no", ""])


def differential_count(predictions: Iterable[Prediction], class_names: Sequence[str]) -> list[tuple[str, int, float]]:
  """(class, count, percent of classified cells) for every class, in class order; failed files excluded."""
  counts = np.zeros(len(class_names), np.int64)
  for p in predictions:
    if p.probabilities is not None:
      counts[int(np.argmax(p.probabilities))] += 1
  total = max(int(counts.sum()), 1)
  return [(name, int(n), 100.0 * n / total) for name, n in zip(class_names, counts)]


def summary(predictions: Sequence[Prediction], class_names: Sequence[str], *, review_threshold: float,
            csv_path: str | None = None) -> str:
  """A hematologist-style differential count, the review line and the unreadable-file line, as text."""
  classified = [p for p in predictions if p.probabilities is not None]
  failed = len(predictions) - len(classified)
  width = max(len(n) for n in class_names)
  lines = [f"Differential count of {len(classified)} cells:", f"  {'class':<{width}}  count  percent"]
  lines += [f"  {name:<{width}}  {n:5d}  {pct:6.1f}%" for name, n, pct in differential_count(classified, class_names)]
  review = sum(float(np.max(p.probabilities)) < review_threshold for p in classified)
  where = f" ('review' column of {csv_path})" if csv_path else ""
  lines.append(f"Flagged for review: {review} of {len(classified)} cells with top probability < "
               f"{review_threshold:g}{where}")
  if failed:
    lines.append(f"Unreadable files skipped: {failed} (reasons in the 'error' column and on stderr)")
  return "\n".join(lines)


def run(bundle: Any, images: str, *, px_per_um: float, out: str = "predictions.csv", batch_size: int = 64,
        review_threshold: float = 0.5, stream: TextIO | None = None) -> list[Prediction]:
  """Finds, classifies and reports: writes the CSV to `out` and prints the summary to `stream` (stdout)."""
  files = find_images(images)
  predictions = predict_files(bundle, files, px_per_um=px_per_um, batch_size=batch_size)
  write_csv(predictions, out, bundle.class_names, review_threshold=review_threshold)
  text = summary(predictions, bundle.class_names, review_threshold=review_threshold, csv_path=out)
  print(text, file=stream or sys.stdout)
  return predictions
