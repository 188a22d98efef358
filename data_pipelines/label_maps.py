"""Label tables: each dataset's folder names or file-name prefixes -> a common class (REFERENCE.md section 3).

A table value is a name from `wbcdg_jax.classes.CLASS_NAMES`, or `DROP` (None) for cell types outside the
13 common classes. Keys not in a table are "unknown labels": builders report and drop them (or fail, with
strict=True). Look-ups try the exact key first and then a case-insensitive match.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import types
from typing import Mapping

from wbcdg_jax.classes import CLASS_NAMES, class_index

DROP = None  # Table value for a known label whose cells are excluded from the common classes.
DROP_WORDS = ("drop", "none", "")  # Spellings of DROP accepted in user mapping files.

FOLDER = "folder"  # Label = name of the first-level folder below the dataset root.
PREFIX = "prefix"  # Label = file-name part before the first underscore ("BA_1234.jpg" -> "BA").
KEY_SOURCES = (FOLDER, PREFIX)


@dataclasses.dataclass(frozen=True)
class LabelMap:
  """One dataset's label table.

  Attributes:
    name: dataset name, used in messages.
    table: original label -> common class name, or DROP.
    key_source: FOLDER or PREFIX, where the original label is read from.
    expected_counts: published number of files per original label, or None (only used for the report).
  """

  name: str
  table: Mapping[str, str | None]
  key_source: str = FOLDER
  expected_counts: Mapping[str, int] | None = None

  def __post_init__(self):
    if self.key_source not in KEY_SOURCES:
      raise ValueError(f"{self.name}: key_source must be one of {KEY_SOURCES}, got {self.key_source!r}")
    for key, value in self.table.items():
      if value is not DROP:
        try:
          class_index(value)
        except KeyError as e:
          raise ValueError(f"{self.name}: label {key!r} maps to {value!r}: {e.args[0]}") from None
    object.__setattr__(self, "table", types.MappingProxyType(dict(self.table)))

  @functools.cached_property
  def _folded(self) -> dict[str, str]:
    """Case-folded key -> key, for keys whose case-folded form is unique."""
    folded: dict[str, list[str]] = {}
    for key in self.table:
      folded.setdefault(key.casefold(), []).append(key)
    return {k: v[0] for k, v in folded.items() if len(v) == 1}

  def resolve(self, original_label: str) -> tuple[str | None, str | None]:
    """Looks a label up.

    Args:
      original_label: folder name or file-name prefix.

    Returns:
      (table key, class name): key None if the label is unknown; class None if the key is DROP or unknown.
    """
    key = original_label if original_label in self.table else self._folded.get(original_label.casefold())
    return (key, None) if key is None else (key, self.table[key])

  def key_for(self, relative_path: str) -> str:
    """Original label of a file given its path relative to the dataset root ('/'-separated)."""
    parts = relative_path.split("/")
    if self.key_source == FOLDER:
      return parts[0] if len(parts) > 1 else ""
    return prefix_of(parts[-1])


def prefix_of(filename: str) -> str:
  """File-name part before the first underscore, without extension: 'SNE_1234.jpg' -> 'SNE'."""
  stem = filename.rsplit(".", 1)[0] if "." in filename.lstrip(".") else filename
  return stem.split("_", 1)[0]


# Matek_19 (AML-Cytomorphology_LMU): class folders. Note MYB is myelocyte and MYO myeloblast.
MATEK19 = LabelMap(
    name="matek19",
    table={
        "BAS": "basophil", "EBO": "erythroblast", "EOS": "eosinophil", "KSC": "smudge_cell",
        "LYA": "lymphocyte_atypical", "LYT": "lymphocyte_typical", "MMZ": "metamyelocyte",
        "MOB": "monocyte", "MON": "monocyte", "MYB": "myelocyte", "MYO": "myeloblast",
        "NGB": "neutrophil_banded", "NGS": "neutrophil_segmented", "PMB": DROP, "PMO": "promyelocyte",
    },
    key_source=FOLDER,
    expected_counts={
        "BAS": 79, "EBO": 78, "EOS": 424, "KSC": 15, "LYA": 11, "LYT": 3937, "MMZ": 15, "MOB": 26,
        "MON": 1789, "MYB": 42, "MYO": 3268, "NGB": 109, "NGS": 8484, "PMB": 18, "PMO": 70,
    },
)

# Acevedo_20 (PBC_dataset_normal_DIB): file-name prefixes (the folder is ignored: ig/ holds several).
ACEVEDO20 = LabelMap(
    name="acevedo20",
    table={
        "BA": "basophil", "EO": "eosinophil", "ERB": "erythroblast", "PMY": "promyelocyte",
        "MY": "myelocyte", "MMY": "metamyelocyte", "BNE": "neutrophil_banded",
        "SNE": "neutrophil_segmented", "MO": "monocyte", "LY": "lymphocyte_typical",
        "IG": DROP, "NEUTROPHIL": DROP, "PLATELET": DROP,
    },
    key_source=PREFIX,
    expected_counts={
        "BA": 1218, "EO": 3117, "ERB": 1551, "PMY": 592, "MY": 1137, "MMY": 1015, "BNE": 1633,
        "SNE": 1646, "MO": 1420, "LY": 1214, "IG": 151, "NEUTROPHIL": 50, "PLATELET": 2348,
    },
)

# Acevedo_20 class folders, used to locate the dataset root.
ACEVEDO20_FOLDERS = (
    "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")

# INT_20 (internal Munich Leukemia Laboratory set): class folders.
INT20 = LabelMap(
    name="int20",
    table={
        "01-NORMO": "erythroblast", "05-MONO": "monocyte", "08-LYMPH-neo": "lymphocyte_atypical",
        "12-LYMPH-reaktiv": "lymphocyte_atypical", "09-BASO": "basophil", "10-EOS": "eosinophil",
        "11-STAB": "neutrophil_banded", "13-MYBL": "myeloblast", "14-LYMPH-typ": "lymphocyte_typical",
        "15-SEG": "neutrophil_segmented", "17-Kernschatten": "smudge_cell", "18-PMYEL": "promyelocyte",
        "19-MYEL": "myelocyte", "20-Meta": "metamyelocyte",
        "04-LGL": DROP, "16-PLZ": DROP, "21-Haarzelle": DROP, "22-Atyp-PMYEL": DROP,
    },
    key_source=FOLDER,
)

# MLL23 (public successor of INT_20): 18 class folders.
MLL23 = LabelMap(
    name="mll23",
    table={
        "myeloblast": "myeloblast", "neutrophil_segmented": "neutrophil_segmented",
        "lymphocyte": "lymphocyte_typical", "hairy_cell": DROP, "monocyte": "monocyte",
        "eosinophil": "eosinophil", "normoblast": "erythroblast", "promyelocyte_atypical": DROP,
        "lymphocyte_large_granular": DROP, "plasma_cell": DROP, "smudge_cell": "smudge_cell",
        "myelocyte": "myelocyte", "promyelocyte": "promyelocyte", "neutrophil_band": "neutrophil_banded",
        "basophil": "basophil", "metamyelocyte": "metamyelocyte",
        "lymphocyte_neoplastic": "lymphocyte_atypical", "lymphocyte_reactive": "lymphocyte_atypical",
    },
    key_source=FOLDER,
    expected_counts={
        "myeloblast": 8606, "neutrophil_segmented": 7170, "lymphocyte": 5532, "hairy_cell": 3265,
        "monocyte": 2510, "eosinophil": 2448, "normoblast": 2071, "promyelocyte_atypical": 2033,
        "lymphocyte_large_granular": 1849, "plasma_cell": 1658, "smudge_cell": 988, "myelocyte": 747,
        "promyelocyte": 745, "neutrophil_band": 687, "basophil": 616, "metamyelocyte": 483,
        "lymphocyte_neoplastic": 180, "lymphocyte_reactive": 33,
    },
)


def _parse_class(value: object, where: str) -> str | None:
  if value is None or (isinstance(value, str) and value.strip().casefold() in DROP_WORDS):
    return DROP
  if not isinstance(value, str):
    raise ValueError(f"{where}: expected a class name or 'drop', got {value!r}")
  name = value.strip()
  if name not in CLASS_NAMES:
    raise ValueError(
        f"{where}: unknown class {name!r}; use 'drop' or one of: {', '.join(CLASS_NAMES)}")
  return name


def load_mapping_table(path: str | os.PathLike[str]) -> dict[str, str | None]:
  """Reads a user label table for the labelled_folders builder.

  Formats (chosen by extension):
    .json: an object {"<folder or prefix>": "<common class>" | "drop" | null, ...}.
    .csv:  two columns `key,class`; an optional header row whose second cell is "class"; blank lines
           and lines starting with '#' are skipped.
  The class may be any name of `wbcdg_jax.classes.CLASS_NAMES`, or "drop" (also "none", empty, null).

  Args:
    path: the table file.

  Returns:
    dict original label -> class name or DROP.

  Raises:
    ValueError: naming the file, the line or key and the offending value.
  """
  path = os.fspath(path)
  table: dict[str, str | None] = {}
  if path.lower().endswith(".json"):
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    if not isinstance(raw, dict):
      raise ValueError(f"{path}: expected a JSON object {{label: class}}, got {type(raw).__name__}")
    for key, value in raw.items():
      table[str(key)] = _parse_class(value, f"{path}: key {key!r}")
  elif path.lower().endswith(".csv"):
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.reader(f))
    for line, row in enumerate(rows, start=1):
      if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
        continue
      if len(row) != 2:
        raise ValueError(f"{path}:{line}: expected 2 columns (key,class), got {row!r}")
      key, value = row[0].strip(), row[1]
      if not table and value.strip().casefold() == "class":
        continue  # Header row.
      if key in table:
        raise ValueError(f"{path}:{line}: key {key!r} appears twice")
      table[key] = _parse_class(value, f"{path}:{line}")
  else:
    raise ValueError(f"{path}: mapping table must be a .csv or .json file")
  if not table:
    raise ValueError(f"{path}: the mapping table is empty")
  return table
