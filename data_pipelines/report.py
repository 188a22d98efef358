"""Build report: what a builder kept, what it dropped and why, duplicates, options (build_report.json)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any

from wbcdg_jax.classes import CLASS_NAMES

# Drop reasons (the `reason` field of every dropped entry).
NOT_IMAGE = "not an image file"
CORRUPT = "corrupt or unreadable image"
UNKNOWN_LABEL = "unknown label"
EXCLUDED = "label excluded from the common classes"
LABEL_CONFLICT = "byte-identical to a file with a different label"
ODD_SIZED = "odd-sized image"

REPORT_FILENAME = "build_report.json"
_EXAMPLES_SHOWN = 5  # Paths listed per reason in the text report (the JSON lists all).


@dataclasses.dataclass
class BuildReport:
  """Mutable record filled while a dataset is built, saved as JSON next to the records.

  Attributes:
    dataset: registry name, e.g. "matek19" or "synthetic_wbc/matek19_like".
    config: TFDS config name (encodes the options).
    options: every builder option with its value.
    source: dataset root folder, or a description of the generator.
    counts: kept examples per common class (all 13 classes, zeros included).
    original_counts: kept examples per original label (folder / prefix code).
    found_counts: image files found per original label, before any drop but "not an image".
    expected_counts: published files per original label, or None.
    dropped: one dict per dropped file: path, reason, original_label, detail.
    unknown_labels: unknown original label -> paths of its files.
    label_table: where the label table comes from (a label_maps table or the user's mapping file).
    empty_folders: folders directly below the dataset root that hold no image file (after dropping files that
      are not images); a class folder among them is a class with 0 images (found_counts has it with 0).
    source_modes: kept examples per source pixel mode ('RGB', 'L', 'RGBA', 'I;16', ...; 'unknown' if the header
      could not say); every mode but 'RGB' was converted to RGB (rules in imaging.py).
    duplicate_groups: groups of byte-identical files: group (sha1), paths, original_labels, classes,
      conflict (True when their common classes differ; such files are all dropped).
    ignored: files next to the class folders that are not examples (e.g. annotations.dat).
    native_sizes: "WxH" -> number of files of that size (read from headers).
    crop_px: px_per_um -> side of the cropped square in source pixels, as strings.
    num_examples: number of records written.
  """

  dataset: str
  config: str
  options: dict[str, Any]
  source: str = ""
  counts: dict[str, int] = dataclasses.field(default_factory=lambda: {c: 0 for c in CLASS_NAMES})
  original_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  found_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  expected_counts: dict[str, int] | None = None
  dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)
  unknown_labels: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  label_table: str = ""
  empty_folders: list[str] = dataclasses.field(default_factory=list)
  source_modes: dict[str, int] = dataclasses.field(default_factory=dict)
  duplicate_groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)
  native_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
  crop_px: dict[str, int] = dataclasses.field(default_factory=dict)
  num_examples: int = 0

  def drop(self, path: str, reason: str, original_label: str = "", detail: str = "") -> None:
    """Records a dropped file."""
    self.dropped.append(dict(path=path, reason=reason, original_label=original_label, detail=detail))

  def keep(self, class_name: str, original_label: str, mode: str = "RGB") -> None:
    """Records one written example whose source pixels had Pillow mode `mode`."""
    self.counts[class_name] += 1
    self.source_modes[mode] = self.source_modes.get(mode, 0) + 1
    self.original_counts[original_label] = self.original_counts.get(original_label, 0) + 1
    self.num_examples += 1

  def converted(self) -> dict[str, int]:
    """Source mode -> number of kept examples converted to RGB from it."""
    return {m: n for m, n in sorted(self.source_modes.items()) if m != "RGB"}

  def warnings(self) -> list[str]:
    """One line per kind of problem worth a look: dropped files, unknown labels, empty folders, conflicts."""
    lines = []
    if self.dropped:
      lines.append(f"{self.dataset}: dropped {len(self.dropped)} files: {self.dropped_by_reason()}")
    if self.unknown_labels:
      lines.append(f"{self.dataset}: labels not in the label table {self.label_table}: "
                   + ", ".join(f"{k!r} ({len(v)} files)" for k, v in sorted(self.unknown_labels.items())))
    if self.empty_folders:
      lines.append(f"{self.dataset}: folders without any image file: {', '.join(self.empty_folders)}")
    conflicts = [g for g in self.duplicate_groups if g["conflict"]]
    if conflicts:
      lines.append(f"{self.dataset}: {len(conflicts)} groups of byte-identical files with different labels, all "
                   f"dropped: " + "; ".join(", ".join(g["paths"]) for g in conflicts[:_EXAMPLES_SHOWN]))
    return lines

  def dropped_by_reason(self) -> dict[str, int]:
    """Reason -> number of dropped files."""
    return dict(collections.Counter(d["reason"] for d in self.dropped))

  def to_json(self) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (adds dropped_by_reason)."""
    out = dataclasses.asdict(self)
    out["dropped_by_reason"] = self.dropped_by_reason()
    out["converted_to_rgb"] = self.converted()
    return out

  def save(self, directory: str | os.PathLike[str]) -> str:
    """Writes `build_report.json` into `directory`; returns its path."""
    path = os.path.join(os.fspath(directory), REPORT_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_json(), f, indent=1, sort_keys=False)
    return path

  @classmethod
  def load(cls, directory: str | os.PathLike[str]) -> BuildReport:
    """Reads `build_report.json` from `directory`."""
    with open(os.path.join(os.fspath(directory), REPORT_FILENAME), encoding="utf-8") as f:
      raw = json.load(f)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in fields})

  def format(self) -> str:
    """Readable multi-line summary (the JSON file has every path)."""
    lines = [f"{self.dataset} [{self.config}]: {self.num_examples} examples",
             f"  source: {self.source}",
             "  options: " + ", ".join(f"{k}={v}" for k, v in self.options.items())]
    if self.crop_px:
      lines.append("  crop: " + ", ".join(f"{p} px/um -> {s} px" for p, s in self.crop_px.items()))
    if self.native_sizes:
      sizes = sorted(self.native_sizes.items(), key=lambda kv: -kv[1])
      lines.append("  native sizes (WxH): " + ", ".join(f"{s}: {n}" for s, n in sizes[:8])
                   + (" ..." if len(sizes) > 8 else ""))
    if self.converted():
      lines.append("  converted to RGB (source mode: images): "
                   + ", ".join(f"{m}: {n}" for m, n in self.converted().items()))
    lines.append("  kept per class:")
    for i, name in enumerate(CLASS_NAMES):
      lines.append(f"    {i:2d} {name:<22s}{self.counts.get(name, 0):7d}")
    lines.append("  kept per original label: "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(self.original_counts.items())))
    by_reason = self.dropped_by_reason()
    lines.append(f"  dropped: {len(self.dropped)}")
    for reason, n in sorted(by_reason.items()):
      examples = [d["path"] for d in self.dropped if d["reason"] == reason][:_EXAMPLES_SHOWN]
      labels = collections.Counter(d["original_label"] for d in self.dropped if d["reason"] == reason)
      label_txt = ", ".join(f"{k or '?'}: {v}" for k, v in sorted(labels.items()))
      lines.append(f"    {reason}: {n} ({label_txt}); e.g. {', '.join(examples)}")
    if self.unknown_labels:
      lines.append(f"  UNKNOWN LABELS (not in the label table {self.label_table}, dropped): " + ", ".join(
          f"{k!r} ({len(v)} files)" for k, v in sorted(self.unknown_labels.items())))
    if self.empty_folders:
      lines.append(f"  EMPTY FOLDERS (no image file): {', '.join(self.empty_folders)}")
    if self.duplicate_groups:
      conflicts = [g for g in self.duplicate_groups if g["conflict"]]
      lines.append(f"  byte-identical groups: {len(self.duplicate_groups)} "
                   f"({sum(len(g['paths']) for g in self.duplicate_groups)} files; kept together by `group`)")
      for g in conflicts:
        lines.append(f"    LABEL CONFLICT (all dropped): {', '.join(g['paths'])} -> {g['classes']}")
    if self.expected_counts:
      diffs = [(k, self.found_counts.get(k, 0), v) for k, v in sorted(self.expected_counts.items())
               if self.found_counts.get(k, 0) != v]
      if diffs:
        lines.append("  found != published count: "
                     + ", ".join(f"{k}: {found} vs {exp}" for k, found, exp in diffs))
      else:
        lines.append("  found image files per label match the published counts")
    if self.ignored:
      lines.append(f"  ignored (not in a class folder): {', '.join(self.ignored[:_EXAMPLES_SHOWN])}"
                   + (" ..." if len(self.ignored) > _EXAMPLES_SHOWN else ""))
    return "\n".join(lines)
