"""Shared TFDS machinery: option configs, the common record features, folder scanning and index writing.

Every domain is one TFDS dataset with a single 'train' split stored as array_record (no TensorFlow needed:
images are stored as raw `Tensor` features, never `tfds.features.Image`). Each record holds

  image: uint8 [S, S, 3]   centre field of view of `fov_um` um, resampled to S = image_size pixels;
  label: int64 []          index into `wbcdg_jax.classes.CLASS_NAMES`;
  original_label: text     folder name or file-name prefix (synthetic: the generator's class name);
  path: text               source file path relative to manual_dir ('/'-separated), or synthetic id;
  group: text              sha1 hex of the source file bytes (synthetic: of the generated pixels), so
                           byte-identical files share a group and folds can keep them together;
  px_per_um: float32 []    resolution of the source image.

Options live in a `WbcConfig` (subclassed per builder) whose name encodes every option that changes the
stored data, so the TFDS directory <data_dir>/<builder>/<config name>/<version>/ never mixes options.
Preparing writes, inside that directory and besides the TFDS files,
  build_report.json (see `report.BuildReport`; written before TFDS renames the folder, so it is atomic with
  the records) and
  index.npz (label int64 [N], group/path/original_label str [N], px_per_um float32 [N]) in RECORD ORDER,
  i.e. index[i] describes `builder.as_data_source('train')[i]` (TFDS reorders records by key hash).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect
import logging
import math
import os
import pathlib
import re
from concurrent import futures
from typing import Any, Callable, ClassVar, Iterable, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import imaging
from data_pipelines import label_maps
from data_pipelines import report as report_lib
from wbcdg_jax.classes import class_index

INDEX_FILENAME = "index.npz"
INDEX_KEYS = ("label", "group", "path", "original_label", "px_per_um")
# Plausible field of view, in source pixels: at least MIN_FOV_PX, at least 1/MAX_IMAGE_TO_FOV of the typical
# image's shorter side and at most MAX_FOV_TO_IMAGE times it. Outside, px_per_um (or fov_um) is almost surely
# wrong: micrometres per pixel given instead of pixels per micrometre, or a factor 10 off.
MIN_FOV_PX = 16
MAX_IMAGE_TO_FOV = 10.0
MAX_FOV_TO_IMAGE = 2.0
_log = logging.getLogger(__name__)
_READ_BACK_CHUNK = 256  # Records decoded per call when writing index.npz.
# record_compression -> array_record writer options. One record per chunk (group_size:1), as TFDS writes them, so
# that a random read decodes one record.
RECORD_COMPRESSIONS = {"none": "group_size:1,uncompressed", "zstd": "group_size:1,zstd:3"}
_RECORD_FILE = re.compile(r".+\.array_record-\d{5}-of-\d{5}")


class _CustomConfigFilter(logging.Filter):
  """Silences TFDS's warning for configs built at run time (every builder here uses them)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_CustomConfigFilter())


class UnknownLabelError(ValueError):
  """strict=True and a file's folder or prefix is not in the dataset's label table."""


class ImplausibleResolutionError(ValueError):
  """px_per_um and fov_um give a field of view far smaller or larger than the images."""


def _num(x: float) -> str:
  """Short stable spelling of a number for config names: 25.0 -> '25', 0.02 -> '0.02'."""
  return format(float(x), "g")


@dataclasses.dataclass(eq=False)
class WbcConfig(tfds.core.BuilderConfig):
  """Options shared by every builder. Build with `from_options`, which also sets `name`.

  Attributes:
    image_size: S, side of the stored images in pixels.
    fov_um: side of the centre field of view kept from each source image, in micrometres.
    strict: raise `UnknownLabelError` on an unknown folder/prefix instead of dropping and reporting it.
      Not part of the name (the data written is the same when the build succeeds).
    num_workers: threads decoding and resizing images. Not part of the name.
    record_compression: how the array_record files store the records: 'none' (the default) or 'zstd' (TFDS's
      writer, zstd level 3). Not part of the name: the records are the same bytes either way and the readers
      take both. Stored images compress little (synthetic 256 px: 77 -> 56 MB) and reading a zstd record cost
      ~385 us against ~71 us uncompressed (one core of a 2-core AMD EPYC, 197 KB records), the input
      pipeline's largest host cost at training and BoDA-refresh speed.
  """

  image_size: int = 256
  fov_um: float = 25.0
  strict: bool = False
  num_workers: int = min(8, os.cpu_count() or 1)
  record_compression: str = "none"

  @classmethod
  def from_options(cls, variant: str | None = None, **options: Any) -> WbcConfig:
    """Creates a config from builder options.

    Args:
      variant: the part after '/' in a registry name ("matek19_like" in "synthetic_wbc/matek19_like");
        builders without variants accept None only.
      **options: fields of this config class.

    Returns:
      the config, with `name` encoding the options.

    Raises:
      TypeError: an unknown option (the message lists the valid ones); ValueError: a bad value.
    """
    if variant is not None:
      raise ValueError(f"this dataset has no '/<variant>' part, got {variant!r}")
    return cls._create(options)

  @classmethod
  def _create(cls, options: dict[str, Any]) -> WbcConfig:
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise TypeError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {list(valid)}")
    config = cls(name="unnamed", **options)
    config.validate()
    config.name = "-".join(config.name_parts())
    return config

  @classmethod
  def option_names(cls) -> tuple[str, ...]:
    """Names of the option fields (the BuilderConfig bookkeeping fields excluded)."""
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in base)

  def options(self) -> dict[str, Any]:
    """Option name -> value, for reports."""
    return {k: getattr(self, k) for k in self.option_names()}

  def validate(self) -> None:
    """Raises ValueError naming the first invalid option."""
    if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1:
      raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
    if not (self.fov_um > 0 and math.isfinite(self.fov_um)):
      raise ValueError(f"fov_um must be a finite number > 0 micrometres, got {self.fov_um!r}")
    if int(self.num_workers) < 1:
      raise ValueError(f"num_workers must be >= 1, got {self.num_workers!r}")
    check_record_compression(self.record_compression)
    self.image_size, self.fov_um = int(self.image_size), float(self.fov_um)

  def name_parts(self) -> list[str]:
    """Pieces of the config name; subclasses put their own options first."""
    return [f"s{self.image_size}", f"fov{_num(self.fov_um)}"]


@dataclasses.dataclass
class Candidate:
  """One source image chosen to become a record.

  Attributes:
    path: path relative to manual_dir ('/'-separated) or synthetic id; also the TFDS key.
    original_label: folder name / prefix / generator label.
    class_name: common class name.
    px_per_um: source resolution.
    group: sha1 hex of the source bytes.
    load: returns the source image as uint8 [H, W, 3]; may raise `imaging.ImageReadError`.
    mode: Pillow mode of the source pixels ('RGB', 'L', 'RGBA', ...; 'unknown'), counted in the report.
  """

  path: str
  original_label: str
  class_name: str
  px_per_um: float
  group: str
  load: Callable[[], np.ndarray]
  mode: str = "RGB"


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], num_workers: int) -> Iterator[Any]:
  """map(fn, items) on a thread pool, in input order, with at most 4 * num_workers items in flight."""
  if num_workers <= 1:
    yield from map(fn, items)
    return
  with futures.ThreadPoolExecutor(num_workers) as pool:
    pending: collections.deque[futures.Future[Any]] = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 4 * num_workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo of a dataset built here, never published to TFDS's bucket.

  A builder made before its dataset is built asks TFDS for precomputed info in gs://tfds-data
  (`initialize_from_bucket`). With GCS access off, as in the open-source TFDS, that call finds nothing but still
  leaves an empty `tmp*tfds` directory in the system temp folder, one per builder.
  """

  def initialize_from_bucket(self) -> None:
    pass


class WbcBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: subclasses say where candidates come from (`_candidates`); this class crops, writes
  the records, the report and the index."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: um-based centre crop, 13 common classes.",
      "1.1.0": "Images stored as raw bytes (Encoding.BYTES): about 30x faster to read than a protobuf int list.",
  }
  CONFIG_CLS: ClassVar[type[WbcConfig]] = WbcConfig
  HOMEPAGE: ClassVar[str] = ""

  def __init__(self, *, config: WbcConfig, data_dir: str, **kwargs: Any):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(config=config, data_dir=data_dir, **kwargs)
    self._report: report_lib.BuildReport | None = None

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This class's source file. Overridden because TFDS's own lookup, for a class inside a package,
    needs the optional `importlib_resources` package (not installed)."""
    return epath.Path(inspect.getfile(cls))

  @property
  def registry_name(self) -> str:
    """Name under which `registry` knows this dataset."""
    return self.name

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    features = tfds.features.FeaturesDict({
        # BYTES: one raw buffer per image; the default encoding stores every pixel as a protobuf int64.
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        "original_label": tfds.features.Text(),
        "path": tfds.features.Text(),
        "group": tfds.features.Text(),
        "px_per_um": tfds.features.Tensor(shape=(), dtype=np.float32),
    })
    return _LocalDatasetInfo(
        builder=self, description=(self.__doc__ or "").strip(), features=features,
        homepage=self.HOMEPAGE or None)

  def _candidates(self, dl_manager: tfds.download.DownloadManager,
                  report: report_lib.BuildReport) -> Iterable[Candidate]:
    """Yields the images to write; records every file it rejects in `report`."""
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    self._report = report_lib.BuildReport(
        dataset=self.registry_name, config=config.name, options=config.options())
    candidates = self._candidates(dl_manager, self._report)
    return {"train": self._generate_examples(candidates)}

  def _process(self, candidate: Candidate) -> dict[str, Any] | imaging.ImageReadError:
    """Loads, crops and resizes one candidate; returns its features or the read error."""
    config = self.builder_config
    try:
      image = candidate.load()
    except imaging.ImageReadError as e:
      return e
    return dict(
        image=imaging.crop_to_fov(
            image, px_per_um=candidate.px_per_um, fov_um=config.fov_um, size=config.image_size),
        label=np.int64(class_index(candidate.class_name)),
        original_label=candidate.original_label,
        path=candidate.path,
        group=candidate.group,
        px_per_um=np.float32(candidate.px_per_um))

  def _generate_examples(self, candidates: Iterable[Candidate]):
    report = self._report
    crop_px = report.crop_px

    def process(candidate):
      return candidate, self._process(candidate)

    for candidate, result in _ordered_map(process, candidates, self.builder_config.num_workers):
      if isinstance(result, imaging.ImageReadError):
        reason = report_lib.NOT_IMAGE if isinstance(result, imaging.NotAnImageError) else report_lib.CORRUPT
        report.drop(candidate.path, reason, candidate.original_label, result.reason)
        continue
      report.keep(candidate.class_name, candidate.original_label, candidate.mode)
      crop_px.setdefault(_num(candidate.px_per_um),
                         imaging.crop_side_px(self.builder_config.fov_um, candidate.px_per_um))
      yield candidate.path, result
    if report.num_examples == 0:  # Fail with the reasons rather than TFDS's "No examples were yielded".
      raise ValueError(
          f"{self.registry_name}: no images were kept from {report.source}; dropped "
          f"{report.dropped_by_reason()}; unknown labels {sorted(report.unknown_labels)}")
    for line in report.warnings():  # Nothing is dropped silently: the report has every path, the log a summary.
      _log.warning("%s", line)

  def _download_and_prepare(self, dl_manager, download_config=None):  # pylint: disable=arguments-differ
    super()._download_and_prepare(dl_manager, download_config)  # Consumes _generate_examples.
    # self.data_dir is still TFDS's temporary folder here, renamed as a whole when this returns.
    rewrite_records(self.data_dir, self.builder_config.record_compression)  # TFDS's writer always uses zstd
    self._report.save(self.data_dir)

  def _post_download_and_prepare_hook(self) -> None:
    write_index(self)


def write_index(builder: tfds.core.DatasetBuilder) -> str:
  """Writes index.npz (record order) into the prepared dataset directory.

  Args:
    builder: a prepared builder of this package.

  Returns:
    the path of index.npz. Arrays: label int64 [N], group, path, original_label str [N],
    px_per_um float32 [N]; entry i describes `builder.as_data_source('train')[i]`.
  """
  source = builder.as_data_source("train")
  columns: dict[str, list[Any]] = {k: [] for k in INDEX_KEYS}
  for start in range(0, len(source), _READ_BACK_CHUNK):
    for example in source.__getitems__(list(range(start, min(len(source), start + _READ_BACK_CHUNK)))):
      for key in INDEX_KEYS:
        value = example[key]
        columns[key].append(value.decode("utf-8") if isinstance(value, bytes) else value)
  arrays = dict(
      label=np.asarray(columns["label"], np.int64),
      group=np.asarray(columns["group"], dtype=str),
      path=np.asarray(columns["path"], dtype=str),
      original_label=np.asarray(columns["original_label"], dtype=str),
      px_per_um=np.asarray(columns["px_per_um"], np.float32))
  path = os.path.join(os.fspath(builder.data_dir), INDEX_FILENAME)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)  # Readers never see a half-written index.
  return path


def check_record_compression(value: str) -> None:
  """Raises ValueError naming record_compression unless `value` is a key of RECORD_COMPRESSIONS."""
  if value not in RECORD_COMPRESSIONS:
    raise ValueError(f"record_compression must be one of {sorted(RECORD_COMPRESSIONS)}, got {value!r}")


def record_files(directory: str | os.PathLike[str]) -> list[str]:
  """The array_record shards of a dataset directory (<name>-train.array_record-NNNNN-of-NNNNN), sorted."""
  directory = os.fspath(directory)
  return sorted(os.path.join(directory, f) for f in os.listdir(directory) if _RECORD_FILE.fullmatch(f))


def record_compression(path: str | os.PathLike[str]) -> str:
  """'none' or 'zstd': how the array_record file `path` stores its records (other codecs: the writer's option)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    options = reader.writer_options_string().split(",")
  finally:
    reader.close()
  if "uncompressed" in options:
    return "none"
  codecs = [o for o in options if o.partition(":")[0] in ("zstd", "brotli", "snappy")]
  return "zstd" if any(o.startswith("zstd") for o in codecs) else ",".join(codecs) or "unknown"


def rewrite_records(directory: str | os.PathLike[str], compression: str, *, chunk: int = _READ_BACK_CHUNK) -> list[str]:
  """Rewrites the array_record shards of `directory` whose records are not stored with `compression`.

  The records (bytes and order) are unchanged, so index.npz and dataset_info.json stay valid. Each shard is
  written beside itself, checked (record count) and renamed over the old one: an interrupted rewrite leaves every
  shard readable, in one format or the other. Memory: `chunk` records at a time.

  Args:
    directory: a dataset directory (or TFDS's temporary one while it prepares).
    compression: a key of RECORD_COMPRESSIONS ('none' or 'zstd').

  Returns:
    the paths rewritten.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  check_record_compression(compression)
  rewritten = []
  for path in record_files(directory):
    if record_compression(path) == compression:
      continue
    tmp = path + ".rewrite"
    try:
      reader = array_record_module.ArrayRecordReader(path)
      try:
        count = reader.num_records()
        writer = array_record_module.ArrayRecordWriter(tmp, RECORD_COMPRESSIONS[compression])
        try:
          for start in range(0, count, chunk):
            for record in reader.read(list(range(start, min(count, start + chunk)))):
              writer.write(record)
        finally:
          writer.close()
      finally:
        reader.close()
      check = array_record_module.ArrayRecordReader(tmp)
      written = check.num_records()
      check.close()
      if written != count:
        raise OSError(f"rewrite_records: {tmp} holds {written} records, {path} {count}; {path} left as it was")
    except BaseException:
      if os.path.exists(tmp):  # e.g. a full disk: the old shard stays, the partial copy goes
        os.remove(tmp)
      raise
    os.replace(tmp, path)
    rewritten.append(path)
  return rewritten


def load_index(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads index.npz from a dataset directory (see `write_index`)."""
  with np.load(os.path.join(os.fspath(directory), INDEX_FILENAME), allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def sha1_hex(data: bytes) -> str:
  """sha1 hex digest of bytes (the `group` of a source file)."""
  return hashlib.sha1(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Folder datasets: class folders (or prefixed file names) of image files below a root in manual_dir.


@dataclasses.dataclass
class _Found:
  """An image file with a known label, before duplicate and size checks."""

  path: str
  abs_path: str
  original_label: str
  key: str
  class_name: str | None
  group: str
  size: tuple[int, int] | None
  mode: str = "unknown"


def check_field_of_view(dataset: str, *, px_per_um: float, fov_um: float, sizes: list[tuple[int, int]],
                        advice: str) -> int:
  """Checks that the field of view fits the images; returns its side in source pixels.

  Args:
    dataset: name for the message.
    px_per_um: resolution the builder assumes, pixels per micrometre.
    fov_um: side of the field of view, micrometres.
    sizes: (width, height) of the images (from their headers); the median shorter side is "typical".
    advice: which option to check, for the message.

  Raises:
    ImplausibleResolutionError: the side is under MIN_FOV_PX, under 1/MAX_IMAGE_TO_FOV of the typical image or
      over MAX_FOV_TO_IMAGE times it; the message names px_per_um, fov_um and both sizes.
  """
  side = imaging.crop_side_px(fov_um, px_per_um)
  if not sizes:
    return side
  typical = int(np.median([min(w, h) for w, h in sizes]))
  if side < MIN_FOV_PX or side * MAX_IMAGE_TO_FOV < typical:
    problem = "tiny"
  elif side > MAX_FOV_TO_IMAGE * typical:
    problem = f"more than {MAX_FOV_TO_IMAGE:g} times the images (mostly padding)"
  else:
    return side
  raise ImplausibleResolutionError(
      f"{dataset}: px_per_um={px_per_um:g} with fov_um={fov_um:g} gives a {fov_um:g} um field of view of {side} px, "
      f"{problem}; the images are typically {typical} px on their shorter side ({len(sizes)} files). {advice}")


class FolderBuilder(WbcBuilder, skip_registration=True):
  """A dataset stored as files below a root folder in manual_dir, labelled by folder or file prefix.

  Subclasses set LABEL_MAP, PX_PER_UM, ROOT_NAMES (folder names the root may have inside manual_dir) and
  LAYOUT (text for error messages), and may override `_extra_drop` (e.g. Acevedo's odd sizes).

  Rules applied to every file below the root, in this order (each rejected file is reported):
    1. bytes without an image signature -> dropped "not an image file" (e.g. `.DS_Store`, a `.DS_x.jpg`);
    2. label (folder or prefix) not in the table -> dropped "unknown label" and listed (strict: error);
    3. label mapped to DROP -> dropped "label excluded from the common classes";
    4. byte-identical files whose common classes differ (a DROP label counts as a class of its own) ->
       all dropped "byte-identical to a file with a different label" and listed with their labels in
       `duplicate_groups` (we cannot tell which label is right); identical files with the same class are all
       kept and share `group` (sha1 of the bytes), which keeps them on one side of every fold split;
    5. `_extra_drop` (Acevedo: drop_odd_sized);
    6. decoding failure while writing (truncated or corrupt TIFF/JPEG/PNG/BMP) -> dropped "corrupt or
       unreadable image" with the decoder's message. Corrupt files are always skipped and reported, never
       fatal (strict only concerns labels): one bad file in 18,000 should not stop a build.
  Also: grayscale, palette, 16-bit and alpha images are converted to RGB (imaging.py) and counted per source
  mode (`source_modes`); folders below the root without any image file are listed in `empty_folders` (a
  class folder among them appears in `found_counts` with 0) and logged; a px_per_um / fov_um pair whose field
  of view is implausible for the images found raises `ImplausibleResolutionError` before anything is written.
  In folder mode, files directly in the root (e.g. Matek's annotations.dat) are listed as ignored.
  """

  LABEL_MAP: ClassVar[label_maps.LabelMap]
  PX_PER_UM: ClassVar[float]
  ROOT_NAMES: ClassVar[tuple[str, ...]] = ()
  LAYOUT: ClassVar[str] = ""

  def label_map(self) -> label_maps.LabelMap:
    return self.LABEL_MAP

  def px_per_um(self) -> float:
    return self.PX_PER_UM

  def _root_markers(self) -> set[str]:
    """Case-folded folder names whose presence identifies the dataset root."""
    return {k.casefold() for k in self.label_map().table}

  def _find_root(self, manual_dir: pathlib.Path) -> pathlib.Path:
    """The folder holding the class folders: manual_dir/<ROOT_NAME>[/<ROOT_NAME>] or manual_dir."""
    markers = self._root_markers()
    tried = [manual_dir / n for n in self.ROOT_NAMES] + [manual_dir / n / n for n in self.ROOT_NAMES]
    tried.append(manual_dir)
    for folder in tried:
      if folder.is_dir() and any(c.is_dir() and c.name.casefold() in markers for c in folder.iterdir()):
        return folder
    raise FileNotFoundError(
        f"{self.registry_name}: no class folders found; looked in {', '.join(map(str, tried))}. "
        f"Expected layout inside manual_dir: {self.LAYOUT}")

  def label_table_source(self) -> str:
    """Where the label table comes from, for messages."""
    return f"data_pipelines/label_maps.py ({self.label_map().name})"

  def resolution_advice(self) -> str:
    """What to check when the field of view does not fit the images (see `check_field_of_view`)."""
    return (f"{self.registry_name} images are {self.px_per_um():g} px/um; check the builder option fov_um "
            f"(micrometres) and that manual_dir holds {self.registry_name} ({self.LAYOUT}).")

  def _extra_drop(self, found: _Found) -> str | None:
    """Returns a detail string to drop `found` as ODD_SIZED, or None to keep it."""
    del found
    return None

  def _candidates(self, dl_manager, report):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    root = self._find_root(manual_dir)
    report.source = str(root)
    report.label_table = self.label_table_source()
    report.expected_counts = dict(self.label_map().expected_counts or {}) or None
    found = self._scan(manual_dir, root, report)
    check_field_of_view(self.registry_name, px_per_um=self.px_per_um(), fov_um=self.builder_config.fov_um,
                        sizes=[f.size for f in found if f.size], advice=self.resolution_advice())
    return self._select(found, report)

  def _files(self, root: pathlib.Path) -> Iterator[tuple[pathlib.Path, str]]:
    """(absolute path, path relative to root) of every file below root, sorted.

    Folders that are symbolic links are followed (a lab's data is often assembled from links to class folders
    kept elsewhere; `_find_root` and the empty-folder check follow them too). A link to the folder itself or to
    one of its ancestors would loop forever, so such a link is skipped (and logged). Two links to one folder
    that is no ancestor are both read: the duplicate rules then see the same files under both names.
    """
    ancestors = {os.fspath(root): (os.path.realpath(root),)}  # dirpath -> realpaths of it and its ancestors
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      chain = ancestors.pop(dirpath)
      kept = []
      for dirname in sorted(dirnames):
        real = os.path.realpath(os.path.join(dirpath, dirname))
        if real in chain:
          _log.warning("%s: skipped %s, a link back to %s (following it would loop)", self.registry_name,
                       os.path.join(dirpath, dirname), real)
          continue
        kept.append(dirname)
        ancestors[os.path.join(dirpath, dirname)] = chain + (real,)
      dirnames[:] = kept
      for filename in sorted(filenames):
        full = pathlib.Path(dirpath) / filename
        yield full, full.relative_to(root).as_posix()

  def _scan(self, manual_dir: pathlib.Path, root: pathlib.Path,
            report: report_lib.BuildReport) -> list[_Found]:
    """Rules 1-2: reads every file once (signature, sha1, header size, label)."""
    table = self.label_map()
    found: list[_Found] = []
    sizes: collections.Counter[str] = collections.Counter()
    found_counts: collections.Counter[str] = collections.Counter()
    images_per_folder: collections.Counter[str] = collections.Counter()
    for full, rel_root in self._files(root):
      rel = full.relative_to(manual_dir).as_posix()
      if table.key_source == label_maps.FOLDER and "/" not in rel_root:
        report.ignored.append(rel)
        continue
      try:
        data = full.read_bytes()
      except OSError as e:
        report.drop(rel, report_lib.CORRUPT, "", f"cannot read file: {e}")
        continue
      original = table.key_for(rel_root)
      if imaging.sniff_format(data) is None:
        report.drop(rel, report_lib.NOT_IMAGE, original, "no TIFF/JPEG/PNG/BMP signature")
        continue
      if "/" in rel_root:
        images_per_folder[rel_root.split("/", 1)[0]] += 1
      size, mode = imaging.image_header(data)
      sizes[f"{size[0]}x{size[1]}" if size else "unknown"] += 1
      key, class_name = table.resolve(original)
      if key is None:
        if self.builder_config.strict:
          raise UnknownLabelError(
              f"{full}: unknown {table.key_source} label {original!r} for {self.registry_name}; the label table "
              f"{self.label_table_source()} knows: {', '.join(table.table)} (add it there, mapped to a class "
              f"or 'drop'; strict=False drops and reports such files instead)")
        report.unknown_labels.setdefault(original, []).append(rel)
        report.drop(rel, report_lib.UNKNOWN_LABEL, original, f"{table.key_source} {original!r} not in table")
        continue
      found_counts[key] += 1
      found.append(_Found(rel, str(full), original, key, class_name, sha1_hex(data), size, mode or "unknown"))
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir()):
      if images_per_folder[folder] == 0:
        report.empty_folders.append((root / folder).relative_to(manual_dir).as_posix())
        key, _ = table.resolve(folder)
        if table.key_source == label_maps.FOLDER and key is not None:
          found_counts[key] += 0  # A class folder with no image: listed in found_counts with 0.
    report.native_sizes = dict(sizes)
    report.found_counts = dict(found_counts)
    return found

  def _select(self, found: list[_Found], report: report_lib.BuildReport) -> list[Candidate]:
    """Rules 3-5: returns the files to write."""
    by_group: dict[str, list[_Found]] = collections.defaultdict(list)
    for f in found:
      by_group[f.group].append(f)
    conflicting = set()
    for group, members in by_group.items():
      if len(members) > 1:
        classes = sorted({m.class_name or "<dropped>" for m in members})
        conflict = len(classes) > 1
        if conflict:
          conflicting.add(group)
        report.duplicate_groups.append(dict(
            group=group, paths=[m.path for m in members],
            original_labels=[m.original_label for m in members], classes=classes, conflict=conflict))
    px = self.px_per_um()
    candidates = []
    for f in found:
      if f.class_name is None:
        report.drop(f.path, report_lib.EXCLUDED, f.original_label, f"{f.key} -> drop")
      elif f.group in conflicting:
        others = [m.path for m in by_group[f.group] if m is not f]
        report.drop(f.path, report_lib.LABEL_CONFLICT, f.original_label, "same bytes as " + ", ".join(others))
      elif (detail := self._extra_drop(f)) is not None:
        report.drop(f.path, report_lib.ODD_SIZED, f.original_label, detail)
      else:
        candidates.append(Candidate(
            path=f.path, original_label=f.original_label, class_name=f.class_name, px_per_um=px,
            group=f.group, load=lambda p=f.abs_path: imaging.read_image(p), mode=f.mode))
    return candidates


_LAB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name_piece(value: str, what: str) -> str:
  """Validates a string that becomes part of a config name / directory name."""
  if not isinstance(value, str) or not _LAB_NAME.match(value):
    raise ValueError(f"{what} must match {_LAB_NAME.pattern} (letters, digits, _ . -), got {value!r}")
  return value
