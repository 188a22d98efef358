"""Public entry points for stored domains: `build`, `open_domain`, `available`.

A domain is addressed by a name, "matek19", "acevedo20", "int20", "mll23", "labelled_folders/<lab>" or
"synthetic_wbc/<domain>", plus a data_dir and builder options (image_size, fov_um, ... see each builder's
config class). The options select the TFDS config, whose name encodes them, so the dataset directory is

  <data_dir>/<builder>/<config name>/<version>/      e.g. data/matek19/s256-fov25/1.1.0/
      <builder>-train.array_record-000NN-of-000MM   records (TFDS)
      dataset_info.json, features.json              TFDS metadata
      build_report.json                             kept/dropped/duplicates/options (report.BuildReport)
      index.npz                                     label/group/path/original_label/px_per_um in record order

A lab's own dataset, `labelled_folders/<lab>`, is opened without its mapping too: `open_domain` then looks for
the built variant whose directory fits image_size/fov_um and reads the rest from its build_report.json.

Example:
  path = build("matek19", data_dir="data", manual_dir="/downloads")
  domain = open_domain("matek19", data_dir="data")
  domain.source[i]["image"]  # uint8 [256, 256, 3]; domain.labels[i] == domain.source[i]["label"]
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import base_builder
from data_pipelines import label_maps
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
    **options: builder options (image_size, fov_um, ...). `record_compression`, given for a dataset already
      built, rewrites its record files that are stored otherwise (the records themselves are unchanged).

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
  else:
    if verbose:
      print(f"{name}: already built at {builder.data_path}")
    compression = options.get("record_compression")
    if compression is not None:  # asked for explicitly: an older build's records are rewritten to match
      rewritten = base_builder.rewrite_records(builder.data_path, compression)
      if rewritten:
        print(f"{name}: rewrote {len(rewritten)} record file(s) at {builder.data_path} with "
              f"record_compression={compression!r}")
  if not (builder.data_path / base_builder.INDEX_FILENAME).exists():
    base_builder.write_index(builder)  # E.g. a crash between TFDS's rename and the index write.
  return os.fspath(builder.data_path)


def _lab_dir_pattern(lab: str) -> re.Pattern[str]:
  """Directory names of lab `lab`'s variants: <lab>-px<px_per_um>-<label_source>-map<sha8>-s<S>-fov<fov>
  (LabelledFoldersConfig.name_parts); groups px, source and size ('s<S>-fov<fov>')."""
  sources = "|".join(map(re.escape, label_maps.KEY_SOURCES))
  return re.compile(rf"{re.escape(lab)}-px(?P<px>.+)-(?P<source>{sources})-map[0-9a-f]{{8}}-(?P<size>s\d+-fov.+)")


def _size_part(options: dict[str, Any]) -> str:
  """'s<S>-fov<fov>' for the image_size/fov_um in `options` (the builder defaults when left out)."""
  sizes = {k: options[k] for k in ("image_size", "fov_um") if k in options}
  return base_builder.WbcConfig.from_options(None, **sizes).name


def _labelled_root(data_dir: str | os.PathLike[str]) -> pathlib.Path:
  return pathlib.Path(os.path.abspath(os.fspath(data_dir))) / LabelledFolders.name


def built_variants(name: str, *, data_dir: str | os.PathLike[str], **options: Any) -> list[pathlib.Path]:
  """The built variants of `labelled_folders/<lab>` that fit `options`, sorted by directory name.

  Args:
    name: "labelled_folders/<lab>".
    data_dir: root folder of all stored datasets.
    **options: image_size and fov_um (builder defaults when left out) select the stored size; px_per_um and
      label_source, when given, must match too; other options (strict, num_workers) are ignored.

  Returns:
    dataset directories <data_dir>/labelled_folders/<lab>-px<..>-<source>-map<..>-s<S>-fov<fov>/<version>/ that
    hold dataset_info.json (a finished build).
  """
  builder_name, _, lab = name.partition("/")
  if builder_name != LabelledFolders.name or not lab:
    raise ValueError(f"built_variants is for 'labelled_folders/<lab>' names, got {name!r}")
  base_builder.check_name_piece(lab, "lab name")
  root, pattern, size = _labelled_root(data_dir), _lab_dir_pattern(lab), _size_part(options)
  version = str(LabelledFolders.VERSION)
  px = options.get("px_per_um")
  px_part = None if px is None else base_builder._num(px)  # pylint: disable=protected-access
  found = []
  for entry in sorted(os.listdir(root)) if root.is_dir() else []:
    match = pattern.fullmatch(entry)
    if not match or match["size"] != size or not (root / entry / version / "dataset_info.json").exists():
      continue
    if px_part is not None and match["px"] != px_part:
      continue
    if options.get("label_source") is not None and match["source"] != options["label_source"]:
      continue
    found.append(root / entry / version)
  return found


def _stored_options(name: str, *, data_dir: str | os.PathLike[str], stored_variants: Sequence[str],
                    options: dict[str, Any]) -> dict[str, Any]:
  """`options` completed with the mapping, px_per_um and label_source of the one built variant they fit.

  Raises:
    FileNotFoundError: no variant is built for these options; names the folder searched and the build command.
    ValueError: several are (lists them and how to pick one), or the chosen one's build_report.json does not
      give back its own directory.
  """
  lab = name.partition("/")[2]
  root, pattern, size = _labelled_root(data_dir), _lab_dir_pattern(lab), _size_part(options)
  found = built_variants(name, data_dir=data_dir, **options)
  picked = sorted(v for v in stored_variants if pattern.fullmatch(v))  # Entries of other labs are ignored.
  if picked:
    found = [d for d in found if d.parent.name in picked]
  given = ", ".join(f"{k}={options[k]!r}" for k in ("px_per_um", "label_source") if options.get(k) is not None)
  wanted = f"image_size/fov_um {size}" + (f", {given}" if given else "") + (
      f", stored_variants {picked}" if picked else "")
  if not found:
    others = sorted(e for e in (os.listdir(root) if root.is_dir() else []) if pattern.fullmatch(e))
    command = build_command(name, data_dir=data_dir, mapping={}, px_per_um=options.get("px_per_um", "<pixels per um>"),
                            **{k: v for k, v in options.items() if k != "px_per_um"})
    raise FileNotFoundError(
        f"{name} is not built for {wanted}: no {lab}-px<px_per_um>-<label_source>-map<table sha1>-{size}/"
        f"{LabelledFolders.VERSION}/ with dataset_info.json in {root}"
        + (f" (other variants there: {', '.join(others)})" if others else "")
        + f". Build it with:\n  {command}")
  if len(found) > 1:
    lines = []
    for d in found:
      match = pattern.fullmatch(d.parent.name)
      lines.append(f"  {d.parent.name}  (px_per_um={match['px']}, label_source={match['source']})")
    raise ValueError(
        f"{name} has {len(found)} built variants for {wanted} in {root}:\n" + "\n".join(lines)
        + f"\nPick one: in a training config set config.data.stored_variants, e.g. "
        f"--config.data.stored_variants='(\"{found[0].parent.name}\",)' (registry.open_domain's stored_variants); "
        f"or give its options (px_per_um=, label_source=, mapping=); or move the others out of {root}.")
  directory = found[0]
  try:
    stored = report_lib.BuildReport.load(directory).options
    opened = dict(options, mapping=dict(stored["table"]), px_per_um=stored["px_per_um"],
                  label_source=stored["label_source"])
    same = stored.get("lab") == lab and make_builder(name, data_dir=data_dir, **opened).data_path == directory
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise ValueError(f"{name}: cannot read the build options from {directory / report_lib.REPORT_FILENAME} "
                     f"({type(e).__name__}: {e}); rebuild it with launch/build_data.py") from e
  if not same:
    raise ValueError(f"{name}: the options in {directory / report_lib.REPORT_FILENAME} (lab {stored.get('lab')!r}) "
                     f"do not name the directory {directory}; it was renamed or edited, rebuild it")
  return opened


def open_domain(name: str, *, data_dir: str | os.PathLike[str], build_if_missing: bool = False,
                stored_variants: Sequence[str] = (), **options: Any) -> DomainData:
  """Opens a built domain.

  Args:
    name: registry name (see `available`).
    data_dir: root folder of all stored datasets.
    build_if_missing: build it first if needed; only for generated (synthetic) domains.
    stored_variants: labelled_folders only: stored directory names (below <data_dir>/labelled_folders/) that pick
      one variant when several of the lab are built; entries of other labs are ignored.
    **options: the builder options it was built with (they select the directory). For labelled_folders/<lab>
      without `mapping`, the built variant that fits image_size/fov_um (and px_per_um/label_source, if given) is
      found on disk and its table, px_per_um and label_source are read from its build_report.json.

  Returns:
    DomainData whose arrays are aligned with `source` (entry i describes source[i]).

  Raises:
    FileNotFoundError: not built; names the expected directory and the command that builds it.
    ValueError: build_if_missing for a real dataset; several built labelled_folders variants fit (listed).
  """
  builder_name, _, variant = name.partition("/")
  if builder_name == LabelledFolders.name and variant and "mapping" not in options:
    options = _stored_options(name, data_dir=data_dir, stored_variants=stored_variants, options=options)
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
