"""Matek_19 (AML-Cytomorphology_LMU, TCIA, CC BY 3.0) as the TFDS dataset `matek19`.

Layout inside manual_dir: `AML-Cytomorphology_LMU/<CODE>/<CODE>_<NNNN>.tiff` (manual_dir may also be the
AML-Cytomorphology_LMU folder itself). File names may carry a suffix such as
` (2021_05_21 20_42_39 UTC)`; the label comes from the folder <CODE> only (table in
`label_maps.MATEK19`). 400 x 400 px at 13.8 px/um, so the 25 um field of view is the centre 345 px.
`annotations.dat` (re-annotations by two more experts) sits next to the class folders; it is not used:
the label is always the original folder label, and the file is listed as "ignored" in the report.
"""

from __future__ import annotations

from data_pipelines import base_builder
from data_pipelines import label_maps


class Matek19(base_builder.FolderBuilder, skip_registration=True):
  """Matek_19 peripheral-blood single-cell images (AML-Cytomorphology_LMU), 13-class harmonised."""

  name = "matek19"
  HOMEPAGE = "https://doi.org/10.7937/tcia.2019.36f5o9ld"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download AML-Cytomorphology_LMU from TCIA and pass the folder that contains "
      "AML-Cytomorphology_LMU/ (or that folder itself) as manual_dir.")
  LABEL_MAP = label_maps.MATEK19
  PX_PER_UM = 13.8
  ROOT_NAMES = ("AML-Cytomorphology_LMU",)
  LAYOUT = "AML-Cytomorphology_LMU/<CODE>/<CODE>_<NNNN>.tiff"
