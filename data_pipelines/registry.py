"""Public entry points for stored domains: `build`, `open_domain`, `available`.

A domain is addressed by a name, "matek19", "acevedo20", "int20", "mll23", "labelled_folders/<lab>" or
"synthetic_wbc/<domain>", plus a data_dir and builder options (image_size, fov_um, ... see each builder's
config class). The options select the TFDS config, whose name encodes them, so the dataset directory is

  <data_dir>/<builder>/<config name>/<version>/      e.g. data/matek19/s256-fov25/1.1.0/
      <builder>-train.array_record-000NN-of-000MM   records (TFDS)
      dataset_info.json, features.json              TFDS metadata
      build_report.json                             kept/dropped/duplicates/options (report.BuildReport)
      index.npz                                     label/group/path/original_label/px_per_um in record order

Example:
  path = build("matek19", data_dir="data", manual_dir="/downloads")
  domain = open_domain("matek19", data_dir="data")
  domain.source[i]["image"]  # uint8 [256, 256, 3]; domain.labels[i] == domain.source[i]["label"]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import base_builder
from data_pipelines import report as report_lib
from data_pipelines.acevedo20 import Acevedo20
from data_pipelines.int20 import Int20, Mll23
from data_pipelines.labelled_folders import LabelledFolders
from data_pipelines.matek19 import Matek19
from data_pipelines.synthetic_builder import SyntheticWbc
from data_pipelines import synthetic_builder

BUILDERS: dict[str, type[base_builder.WbcBuilder]] = {
    "matek19": Matek19,
    "acevedo20": Acevedo20,
    "int20": Int20,
    "mll23": Mll23,
    "labelled_folders": LabelledFolders,
    "synthetic_wbc": SyntheticWbc,
}
GENERATED = ("synthetic_wbc",)  # Builders that need no manual_dir and may be built on demand.
_KNOWN_SYNTHETIC = ("matek19_like", "acevedo20_like", "int20_like")  # If the generator is not importable.


@dataclasses.dataclass(frozen=True, eq=False)
class DomainData:
  """One stored domain, ready for the input pipeline.

  Attributes:
    name: registry name, e.g. "matek19" or "synthetic_wbc/matek19_like".
    source: random-access records (len(), [i], __getitems__), picklable; source[i] is a dict of numpy
      values: image uint8 [S, S, 3], label int64 [], original_label/path/group bytes, px_per_um float32 [].
    labels: int64 [N], common-class index of record i.
    groups: str [N], sha1 of the source bytes of record i (identical files share one).
    paths: str [N], source path relative to manual_dir (or synthetic id) of record i.
    original_labels: str [N], folder/prefix code of record i.
    image_size: S.
    directory: the dataset directory (holds build_report.json and index.npz).
  """

  name: str
  source: Any
  labels: np.ndarray
  groups: np.ndarray
  paths: np.ndarray
  original_labels: np.ndarray
  image_size: int
  directory: str

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def available() -> list[str]:
  """Names `build` accepts ('<lab>' stands for any lab name)."""
  try:
    synthetic = synthetic_builder.domains()
  except ImportError:
    synthetic = _KNOWN_SYNTHETIC
  return ["matek19", "acevedo20", "int20", "mll23", "labelled_folders/<lab>"] + [
      f"synthetic_wbc/{d}" for d in synthetic]


def _split_name(name: str) -> tuple[type[base_builder.WbcBuilder], str | None]:
  builder_name, _, variant = name.partition("/")
  if builder_name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; available: {available()}")
  return BUILDERS[builder_name], (variant or None)


def make_builder(name: str, *, data_dir: str | os.PathLike[str], **options: Any) -> base_builder.WbcBuilder:
  """The TFDS builder for a registry name and options (nothing is read or written yet).

  Args:
    name: registry name (see `available`).
    data_dir: root folder of all stored datasets.
    **options: builder options, e.g. image_size=256, fov_um=25.0 (see the builder's config class).

  Returns:
    the builder; `builder.data_path` is the dataset directory.
  """
  cls, variant = _split_name(name)
  config = cls.CONFIG_CLS.from_options(variant, **options)
  return cls(config=config, data_dir=os.path.abspath(os.fspath(data_dir)))


def _is_built(builder: base_builder.WbcBuilder) -> bool:
  return (builder.data_path / "dataset_info.json").exists()


def build_command(name: str, *, data_dir: str | os.PathLike[str], **options: Any) -> str:
  """The launch/build_data.py command line that builds `name` with these options."""
  parts = ["python launch/build_data.py", f"--dataset={name}", f"--data_dir={os.fspath(data_dir)}"]
  if name.partition("/")[0] not in GENERATED:
    parts.append("--manual_dir=<folder with the downloaded files>")
  for key, value in options.items():
    parts.append(f"--{key}=<table .csv/.json>" if isinstance(value, dict) else f"--{key}={value}")
  return " ".join(parts)


def build(name: str, *, data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str] | None = None,
          verbose: bool = True, **options: Any) -> str:
  """Builds a domain if it is not built yet (idempotent) and returns its directory.

  Args:
    name: registry name (see `available`).
    data_dir: root folder of all stored datasets.
    manual_dir: folder with the downloaded files (real datasets only; unused when already built).
    verbose: print the build report after building.
    **options: builder options (image_size, fov_um, ...).

  Returns:
    the dataset directory <data_dir>/<builder>/<config>/<version>.

  Raises:
    ValueError: manual_dir missing for a real dataset that is not built, or given for a generated one.
  """
  builder = make_builder(name, data_dir=data_dir, **options)
  generated = builder.name in GENERATED
  if generated and manual_dir is not None:
    raise ValueError(f"{name} is generated and takes no manual_dir (got {manual_dir!r})")
  if not _is_built(builder):
    if not generated and manual_dir is None:
      raise ValueError(f"{name} is not built at {builder.data_path} and needs manual_dir, the folder with "
                       f"the downloaded files: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    download_config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.path.abspath(os.fspath(manual_dir)))
    builder.download_and_prepare(download_config=download_config)
    if verbose:
      print(report_lib.BuildReport.load(builder.data_path).format())
  elif verbose:
    print(f"{name}: already built at {builder.data_path}")
  if not (builder.data_path / base_builder.INDEX_FILENAME).exists():
    base_builder.write_index(builder)  # E.g. a crash between TFDS's rename and the index write.
  return os.fspath(builder.data_path)


def open_domain(name: str, *, data_dir: str | os.PathLike[str], build_if_missing: bool = False,
                **options: Any) -> DomainData:
  """Opens a built domain.

  Args:
    name: registry name (see `available`).
    data_dir: root folder of all stored datasets.
    build_if_missing: build it first if needed; only for generated (synthetic) domains.
    **options: the builder options it was built with (they select the directory).

  Returns:
    DomainData whose arrays are aligned with `source` (entry i describes source[i]).

  Raises:
    FileNotFoundError: not built; names the expected directory and the command that builds it.
    ValueError: build_if_missing for a real dataset.
  """
  builder = make_builder(name, data_dir=data_dir, **options)
  if not _is_built(builder):
    if build_if_missing:
      if builder.name not in GENERATED:
        raise ValueError(f"build_if_missing is only for generated domains {GENERATED}; build {name} with: "
                         + build_command(name, data_dir=data_dir, **options))
      build(name, data_dir=data_dir, verbose=False, **options)
      builder = make_builder(name, data_dir=data_dir, **options)
    else:
      raise FileNotFoundError(
          f"{name} is not built: expected {builder.data_path} (with dataset_info.json). Build it with:\n  "
          + build_command(name, data_dir=data_dir, **options))
  if not (builder.data_path / base_builder.INDEX_FILENAME).exists():
    base_builder.write_index(builder)
  index = base_builder.load_index(builder.data_path)
  source = builder.as_data_source("train")
  if len(source) != len(index["label"]):
    raise RuntimeError(f"{builder.data_path}: index.npz has {len(index['label'])} entries but the records "
                       f"{len(source)}; delete index.npz to rebuild it")
  return DomainData(
      name=name, source=source, labels=index["label"], groups=index["group"], paths=index["path"],
      original_labels=index["original_label"], image_size=builder.builder_config.image_size,
      directory=os.fspath(builder.data_path))
