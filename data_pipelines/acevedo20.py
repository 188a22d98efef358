"""Acevedo_20 (PBC_dataset_normal_DIB, Mendeley, CC BY 4.0) as the TFDS dataset `acevedo20`.

Layout inside manual_dir: `PBC_dataset_normal_DIB/<folder>/<PREFIX>_<id>.jpg` with folders basophil,
eosinophil, erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet (manual_dir may also be the
PBC_dataset_normal_DIB folder itself, or hold PBC_dataset_normal_DIB/PBC_dataset_normal_DIB/). The label is
the file-name prefix (`label_maps.ACEVEDO20`): ig/ mixes PMY_, MY_, MMY_ and IG_ files. 10 px/um, so the
25 um field of view of a 360 x 363 image is its centre 250 x 250 px.

Known defects handled by the shared rules of `base_builder.FolderBuilder`: the `.DS_...jpg` in
neutrophil/ is not an image (dropped "not an image file"); byte-identical files share a `group`; the pair
of identical files with different labels is dropped and listed in the report.

Option drop_odd_sized (default False): also drop every image whose size is not exactly 360 x 363
(width x height), i.e. the 366 x 369, 360 x 360 and 359-362 px images, which form a separate colour
cluster. The definition does not look at the class (in the published data only BA/EO/LY/MO/ERB are odd).
"""

from __future__ import annotations

import dataclasses

from data_pipelines import base_builder
from data_pipelines import label_maps

STANDARD_SIZE = (360, 363)  # (width, height) of the regular Acevedo images.


@dataclasses.dataclass(eq=False)
class Acevedo20Config(base_builder.WbcConfig):
  """Adds drop_odd_sized: drop images whose (width, height) is not STANDARD_SIZE."""

  drop_odd_sized: bool = False

  def name_parts(self) -> list[str]:
    return super().name_parts() + (["dropodd"] if self.drop_odd_sized else [])


class Acevedo20(base_builder.FolderBuilder, skip_registration=True):
  """Acevedo_20 normal peripheral-blood cell images (PBC_dataset_normal_DIB), 13-class harmonised."""

  name = "acevedo20"
  HOMEPAGE = "https://data.mendeley.com/datasets/snkd93bnjr/1"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download and unzip PBC_dataset_normal_DIB from Mendeley Data and pass the folder that contains "
      "PBC_dataset_normal_DIB/ (or that folder itself) as manual_dir.")
  CONFIG_CLS = Acevedo20Config
  LABEL_MAP = label_maps.ACEVEDO20
  PX_PER_UM = 10.0
  ROOT_NAMES = ("PBC_dataset_normal_DIB",)
  LAYOUT = "PBC_dataset_normal_DIB/<folder>/<PREFIX>_<id>.jpg"

  def _root_markers(self) -> set[str]:
    return set(label_maps.ACEVEDO20_FOLDERS)

  def _extra_drop(self, found):
    if self.builder_config.drop_odd_sized and found.size != STANDARD_SIZE:
      size = f"{found.size[0]}x{found.size[1]}" if found.size else "unknown size"
      return f"{size}, not {STANDARD_SIZE[0]}x{STANDARD_SIZE[1]} (drop_odd_sized=True)"
    return None
