"""INT_20 (internal Munich Leukemia Laboratory set) and its public successor MLL23 as TFDS datasets.

`int20`: class folders named as in `label_maps.INT20` (01-NORMO, 05-MONO, ...), TIFF, 288 x 288 px at
11.52 px/um, so the 25 um field of view is the whole image. Layout inside manual_dir:
`[INT_20/]<NN-NAME>/<file>.tif[f]`.

`mll23`: 18 class folders named as in `label_maps.MLL23` (myeloblast, normoblast, ...), TIFF, about 41,600
images. Assumption (not stated by the source we have): same scanner and resolution as INT_20, 11.52 px/um
(288 px = 25 um). If that turns out wrong, build it as
`labelled_folders/mll23` with options mapping="mll23" (this table) and px_per_um=<value>. Layout inside manual_dir: `[MLL23/]<class>/<file>.tif[f]`.
"""

from __future__ import annotations

from data_pipelines import base_builder
from data_pipelines import label_maps

MLL_PX_PER_UM = 11.52


class Int20(base_builder.FolderBuilder, skip_registration=True):
  """INT_20 internal peripheral-blood single-cell images (MLL), 13-class harmonised."""

  name = "int20"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder that holds the INT_20 class folders (01-NORMO, 05-MONO, ...) as manual_dir.")
  LABEL_MAP = label_maps.INT20
  PX_PER_UM = MLL_PX_PER_UM
  ROOT_NAMES = ("INT_20", "INT20", "int20")
  LAYOUT = "[INT_20/]<NN-NAME>/<file>.tif"


class Mll23(base_builder.FolderBuilder, skip_registration=True):
  """MLL23 public peripheral-blood single-cell images (18 classes), 13-class harmonised."""

  name = "mll23"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the folder that holds the 18 MLL23 class folders (myeloblast, normoblast, ...) as manual_dir.")
  LABEL_MAP = label_maps.MLL23
  PX_PER_UM = MLL_PX_PER_UM
  ROOT_NAMES = ("MLL23", "mll23")
  LAYOUT = "[MLL23/]<class>/<file>.tif"
