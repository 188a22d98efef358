"""The common 13-class label space shared by every domain (REFERENCE.md section 3).

This tuple is the one definition of the classes: builders map every dataset's folder names or prefixes into it,
and models predict indices into it.
"""

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "myeloblast",
    "promyelocyte",
    "myelocyte",
    "metamyelocyte",
    "neutrophil_banded",
    "neutrophil_segmented",
    "monocyte",
    "lymphocyte_typical",
    "lymphocyte_atypical",
    "smudge_cell",
)
NUM_CLASSES: int = len(CLASS_NAMES)
_INDEX = {name: i for i, name in enumerate(CLASS_NAMES)}


def class_index(name: str) -> int:
  """Returns the common-class index of `name`; raises KeyError listing the valid names."""
  try:
    return _INDEX[name]
  except KeyError:
    raise KeyError(f"unknown class name {name!r}; the common classes are {', '.join(CLASS_NAMES)}") from None
