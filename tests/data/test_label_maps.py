"""Tests for data_pipelines/label_maps.py against the tables of REFERENCE.md section 3 (indices typed out)."""

import json

import pytest

from data_pipelines import label_maps
from wbcdg_jax.classes import class_index

# Common classes: 0 basophil, 1 eosinophil, 2 erythroblast, 3 myeloblast, 4 promyelocyte, 5 myelocyte,
# 6 metamyelocyte, 7 neutrophil_banded, 8 neutrophil_segmented, 9 monocyte, 10 lymphocyte_typical,
# 11 lymphocyte_atypical, 12 smudge_cell; None = dropped.
MATEK_INDEX = {"BAS": 0, "EBO": 2, "EOS": 1, "KSC": 12, "LYA": 11, "LYT": 10, "MMZ": 6, "MOB": 9, "MON": 9,
               "MYB": 5, "MYO": 3, "NGB": 7, "NGS": 8, "PMB": None, "PMO": 4}
ACEVEDO_INDEX = {"BA": 0, "EO": 1, "ERB": 2, "PMY": 4, "MY": 5, "MMY": 6, "BNE": 7, "SNE": 8, "MO": 9,
                 "LY": 10, "IG": None, "NEUTROPHIL": None, "PLATELET": None}
INT20_INDEX = {"01-NORMO": 2, "05-MONO": 9, "08-LYMPH-neo": 11, "12-LYMPH-reaktiv": 11, "09-BASO": 0,
               "10-EOS": 1, "11-STAB": 7, "13-MYBL": 3, "14-LYMPH-typ": 10, "15-SEG": 8,
               "17-Kernschatten": 12, "18-PMYEL": 4, "19-MYEL": 5, "20-Meta": 6, "04-LGL": None,
               "16-PLZ": None, "21-Haarzelle": None, "22-Atyp-PMYEL": None}
MLL23_INDEX = {"myeloblast": 3, "neutrophil_segmented": 8, "lymphocyte": 10, "hairy_cell": None,
               "monocyte": 9, "eosinophil": 1, "normoblast": 2, "promyelocyte_atypical": None,
               "lymphocyte_large_granular": None, "plasma_cell": None, "smudge_cell": 12, "myelocyte": 5,
               "promyelocyte": 4, "neutrophil_band": 7, "basophil": 0, "metamyelocyte": 6,
               "lymphocyte_neoplastic": 11, "lymphocyte_reactive": 11}


def _indices(label_map):
  return {k: None if v is None else class_index(v) for k, v in label_map.table.items()}


@pytest.mark.parametrize("label_map, expected", [
    (label_maps.MATEK19, MATEK_INDEX), (label_maps.ACEVEDO20, ACEVEDO_INDEX),
    (label_maps.INT20, INT20_INDEX), (label_maps.MLL23, MLL23_INDEX)])
def test_tables_match_reference(label_map, expected):
  assert _indices(label_map) == expected


def test_published_totals():
  def mapped(m):
    return sum(n for k, n in m.expected_counts.items() if m.table[k] is not None)
  assert sum(label_maps.MATEK19.expected_counts.values()) == 18365
  assert mapped(label_maps.MATEK19) == 18347
  assert mapped(label_maps.ACEVEDO20) == 14543
  assert len(label_maps.MLL23.table) == 18
  assert sum(label_maps.MLL23.expected_counts.values()) == 41621  # "about 41,600"


def test_resolve_exact_then_case_insensitive_then_unknown():
  m = label_maps.MATEK19
  assert m.resolve("NGS") == ("NGS", "neutrophil_segmented")
  assert m.resolve("ngs") == ("NGS", "neutrophil_segmented")
  assert m.resolve("PMB") == ("PMB", None)
  assert m.resolve("XYZ") == (None, None)


def test_key_for_folder_and_prefix():
  assert label_maps.MATEK19.key_for("NGS/NGS_0001 (2021_05_21 20_42_39 UTC).tiff") == "NGS"
  assert label_maps.MATEK19.key_for("annotations.dat") == ""
  assert label_maps.ACEVEDO20.key_for("ig/MMY_123.jpg") == "MMY"
  assert label_maps.prefix_of("NEUTROPHIL_77.jpg") == "NEUTROPHIL"
  assert label_maps.prefix_of("PLATELET_1.tar.jpg") == "PLATELET"
  assert label_maps.prefix_of(".DS_Store.jpg") == ".DS"


def test_bad_class_in_builtin_style_table_is_rejected():
  with pytest.raises(ValueError, match="'lymphocyte'"):
    label_maps.LabelMap("lab", {"LY": "lymphocyte"})


def test_load_csv_with_header_comments_and_drop(tmp_path):
  path = tmp_path / "map.csv"
  path.write_text("key,class\n# a comment\nNEU,neutrophil_segmented\nPLT,drop\n\nLYM, lymphocyte_typical\n")
  assert label_maps.load_mapping_table(path) == {
      "NEU": "neutrophil_segmented", "PLT": None, "LYM": "lymphocyte_typical"}


def test_load_json(tmp_path):
  path = tmp_path / "map.json"
  path.write_text(json.dumps({"Basophil": "basophil", "Artefact": None, "Junk": "DROP"}))
  assert label_maps.load_mapping_table(path) == {"Basophil": "basophil", "Artefact": None, "Junk": None}


def test_load_csv_errors_name_file_and_line(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("NEU,neutrophil_segmented\nLYM,lymphocytes\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: unknown class 'lymphocytes'"):
    label_maps.load_mapping_table(path)
  path.write_text("NEU,neutrophil_segmented,extra\n")
  with pytest.raises(ValueError, match=r"bad.csv:1: expected 2 columns"):
    label_maps.load_mapping_table(path)
  other = tmp_path / "map.txt"
  other.write_text("x")
  with pytest.raises(ValueError, match="csv or .json"):
    label_maps.load_mapping_table(other)
