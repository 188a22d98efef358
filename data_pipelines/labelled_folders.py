"""`labelled_folders`: any lab's images, labelled by a user table (folder or file prefix -> common class).

Registry name `labelled_folders/<lab>`; options:
  mapping: path of a .csv/.json table (format in `label_maps.load_mapping_table`), a dict
    {label: class or "drop"}, or the name of a built-in table ("matek19", "acevedo20", "int20", "mll23");
  px_per_um: resolution of the lab's images (required);
  label_source: "folder" (default; first-level folder below manual_dir) or "prefix" (file-name part
    before the first underscore, files anywhere below manual_dir);
  plus image_size, fov_um, strict, num_workers.
A px_per_um that is not a finite number > 0 is refused when the builder is made; one that makes the fov_um field
of view implausible for the images found (base_builder.check_field_of_view) fails the build before any record
is written, naming both numbers.
manual_dir is the folder that holds the class folders (or the prefixed files). The config name, hence the
directory, is `<lab>-px<px_per_um>-<label_source>-map<first 8 hex of the table's sha1>-s<S>-fov<fov>`:
the table is hashed by content, so editing it gives a new directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
from typing import Any

from data_pipelines import base_builder
from data_pipelines import label_maps

BUILTIN_TABLES = {
    "matek19": label_maps.MATEK19, "acevedo20": label_maps.ACEVEDO20,
    "int20": label_maps.INT20, "mll23": label_maps.MLL23,
}


@dataclasses.dataclass(eq=False)
class LabelledFoldersConfig(base_builder.WbcConfig):
  """Adds the lab name, its label table, resolution and label source.

  Attributes:
    lab: lab / dataset name (letters, digits, _ . -), the registry variant.
    table: ((label, class or None), ...) sorted by label; built from `mapping` by `from_options`.
    mapping_source: where the table came from (path or description), for the report only.
    px_per_um: resolution of the images.
    label_source: label_maps.FOLDER or label_maps.PREFIX.
  """

  lab: str = ""
  table: tuple[tuple[str, str | None], ...] = ()
  mapping_source: str = ""
  px_per_um: float = 0.0
  label_source: str = label_maps.FOLDER

  @classmethod
  def from_options(cls, variant: str | None = None, **options: Any) -> LabelledFoldersConfig:
    """Like `WbcConfig.from_options`; variant is the lab name and `mapping` is turned into `table`."""
    if not variant:
      raise ValueError("labelled_folders needs a lab name: 'labelled_folders/<lab>'")
    if "mapping" not in options:
      raise ValueError("labelled_folders needs mapping=<.csv/.json path, dict or built-in table name>")
    mapping = options.pop("mapping")
    if isinstance(mapping, dict):
      table, source = dict(mapping), "dict"
    elif isinstance(mapping, str) and mapping in BUILTIN_TABLES:
      table, source = dict(BUILTIN_TABLES[mapping].table), f"built-in table {mapping}"
    else:
      table = label_maps.load_mapping_table(mapping)
      source = os.path.abspath(os.fspath(mapping))
    options.update(lab=variant, table=tuple(sorted(table.items())), mapping_source=source)
    return cls._create(options)

  def validate(self) -> None:
    super().validate()
    base_builder.check_name_piece(self.lab, "lab name")
    if not self.px_per_um or not (float(self.px_per_um) > 0 and math.isfinite(float(self.px_per_um))):
      raise ValueError(f"labelled_folders/{self.lab}: the builder option px_per_um (pixels per micrometre) must be "
                       f"given, finite and > 0, got {self.px_per_um!r}")
    self.px_per_um = float(self.px_per_um)
    label_maps.LabelMap(self.lab, dict(self.table), self.label_source)  # Validates classes and source.

  def table_hash(self) -> str:
    """First 8 hex digits of the sha1 of the table's canonical JSON."""
    return hashlib.sha1(json.dumps(list(self.table)).encode("utf-8")).hexdigest()[:8]

  def name_parts(self) -> list[str]:
    return [self.lab, f"px{base_builder._num(self.px_per_um)}", self.label_source,  # pylint: disable=protected-access
            f"map{self.table_hash()}"] + super().name_parts()

  def options(self) -> dict[str, Any]:
    out = super().options()
    out["table"] = {k: v for k, v in self.table}
    return out


class LabelledFolders(base_builder.FolderBuilder, skip_registration=True):
  """Any lab's single-cell images in class folders (or with label prefixes), mapped by a user table."""

  name = "labelled_folders"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder that holds the class folders (or prefixed files)."
  CONFIG_CLS = LabelledFoldersConfig
  LAYOUT = "<label>/<file> (label_source=folder) or <any folders>/<LABEL>_<id>.<ext> (label_source=prefix)"

  @property
  def registry_name(self) -> str:
    return f"{self.name}/{self.builder_config.lab}"

  def label_map(self) -> label_maps.LabelMap:
    config = self.builder_config
    return label_maps.LabelMap(config.lab, dict(config.table), config.label_source)

  def px_per_um(self) -> float:
    return self.builder_config.px_per_um

  def label_table_source(self) -> str:
    return self.builder_config.mapping_source

  def resolution_advice(self) -> str:
    return ("Check the builder option px_per_um (--px_per_um): pixels per micrometre, about 10-15 for a 100x oil "
            "objective, not micrometres per pixel; and fov_um (micrometres).")

  def _find_root(self, manual_dir: pathlib.Path) -> pathlib.Path:
    if not manual_dir.is_dir():
      raise FileNotFoundError(f"{self.registry_name}: manual_dir {manual_dir} is not a folder")
    return manual_dir
