r"""Builds one stored domain (TFDS array_record + index.npz + build_report.json) and prints its report.

Examples:
  python launch/build_data.py --dataset=matek19 --manual_dir=/path/to/downloads --data_dir=./data
  python launch/build_data.py --dataset=acevedo20 --manual_dir=/dl --drop_odd_sized
  python launch/build_data.py --dataset=synthetic_wbc/matek19_like --scale=0.02 --seed=0
  python launch/build_data.py --dataset=labelled_folders/raabin --manual_dir=/dl/raabin \
      --mapping=raabin.csv --px_per_um=10
  python launch/build_data.py --dataset=matek19 --record_compression=none   # records of an older build, unpacked
Options that change the stored data (image_size, fov_um, scale, seed, drop_odd_sized, mapping, px_per_um,
label_source) select the output directory, so builds with different options never collide. Re-running
with the same options reuses the stored dataset and prints its report again. record_compression is not one of
them: it changes how the files store the same records.
"""

from __future__ import annotations

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app
from absl import flags

from data_pipelines import registry
from data_pipelines import report as report_lib

_DATASET = flags.DEFINE_string("dataset", None, "Registry name, e.g. matek19 or synthetic_wbc/matek19_like.")
_DATA_DIR = flags.DEFINE_string("data_dir", "./data", "Root folder of the stored datasets.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the downloaded files (real datasets).")
flags.DEFINE_integer("image_size", 256, "Side S of the stored images, pixels.")
flags.DEFINE_float("fov_um", 25.0, "Side of the centre field of view kept, micrometres.")
flags.DEFINE_bool("strict", False, "Fail on unknown folder/prefix labels instead of dropping them.")
flags.DEFINE_integer("num_workers", None, "Decoding threads (default: min(8, CPUs)).")
flags.DEFINE_float("scale", None, "synthetic_wbc: fraction of the real class counts to generate.")
flags.DEFINE_integer("seed", None, "synthetic_wbc: generator seed.")
flags.DEFINE_bool("drop_odd_sized", None, "acevedo20: drop images that are not 360x363.")
flags.DEFINE_string("mapping", None, "labelled_folders: .csv/.json label table or built-in table name.")
flags.DEFINE_float("px_per_um", None, "labelled_folders: resolution of the images, pixels per um.")
flags.DEFINE_string("label_source", None, "labelled_folders: 'folder' (default) or 'prefix'.")
flags.DEFINE_enum("record_compression", None, ["none", "zstd"],
                  "How the record files store the records: 'none' (new builds' default; reads ~5x cheaper on the "
                  "host) or 'zstd' (smaller files). Given for a dataset already built, rewrites its record files.")

_ALWAYS = ("image_size", "fov_um", "strict")  # Valid for every builder.
_OPTIONAL = ("num_workers", "scale", "seed", "drop_odd_sized", "mapping", "px_per_um", "label_source",
             "record_compression")


def options_from_flags() -> dict[str, object]:
  """Builder options: the common ones always, the builder-specific ones only when given."""
  options = {name: flags.FLAGS[name].value for name in _ALWAYS}
  options.update({name: flags.FLAGS[name].value for name in _OPTIONAL if flags.FLAGS[name].value is not None})
  return options


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = options_from_flags()
  path = registry.build(_DATASET.value, data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
                        verbose=False, **options)
  print(report_lib.BuildReport.load(path).format())
  print(f"\nstored at {path}")


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  app.run(main)
