"""End-to-end tests of the TFDS builders on tiny trees with the real folder names and file-name patterns.

Images are tiny (40 x 40 px, or the real Acevedo sizes) and stored at image_size 16; fov_um is shrunk where
needed so the crop stays inside the tiny images. Every test checks exact class indices per file, the
report's drops and reasons, and that index.npz is aligned with the records.
"""

import io
import json
import logging
import os
import sys
import types

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_pipelines import base_builder
from data_pipelines import imaging
from data_pipelines import registry
from data_pipelines import report as report_lib

S = 16
SUFFIX = " (2021_05_21 20_42_39 UTC)"


def _noise(seed, h=40, w=40):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(seed, h, w):
  """A smooth random colour gradient along both axes (JPEG-friendly), uint8 [h, w, 3]."""
  rng = np.random.default_rng(seed)
  a, b, c = rng.integers(0, 256, 3), rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  tx, ty = np.linspace(0, 1, w)[None, :, None], np.linspace(0, 1, h)[:, None, None]
  return np.rint(a + (b - a) * tx * 0.5 + (c - a) * ty * 0.5).clip(0, 255).astype(np.uint8)


def _save(path, image, fmt, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buf = io.BytesIO()
  (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format=fmt, **kwargs)
  with open(path, "wb") as f:
    f.write(buf.getvalue())
  return buf.getvalue()


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _check_alignment(domain, size=S):
  """index.npz entry i describes record i."""
  assert len(domain.source) == len(domain.labels) == len(domain.paths) == len(domain.groups)
  for i in range(len(domain.source)):
    ex = domain.source[i]
    assert ex["label"] == domain.labels[i]
    assert ex["path"].decode() == domain.paths[i]
    assert ex["group"].decode() == domain.groups[i]
    assert ex["original_label"].decode() == domain.original_labels[i]
    assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
  assert domain.labels.dtype == np.int64


def _report(domain):
  with open(os.path.join(domain.directory, report_lib.REPORT_FILENAME)) as f:
    return json.load(f)


def _drops(report):
  return {(d["path"], d["reason"]) for d in report["dropped"]}


def _record(domain, path):
  return domain.source[int(np.flatnonzero(domain.paths == path)[0])]


# --- Matek_19 --------------------------------------------------------------------------------------------

M = "AML-Cytomorphology_LMU"
MATEK_KEPT = {  # path -> common class index
    f"{M}/BAS/BAS_0001.tiff": 0, f"{M}/BAS/BAS_0002{SUFFIX}.tiff": 0, f"{M}/EBO/EBO_0001.tiff": 2,
    f"{M}/EOS/EOS_0001.tiff": 1, f"{M}/NGS/NGS_0001.tiff": 8, f"{M}/NGS/NGS_0002.tiff": 8,
    f"{M}/MON/MON_0002.tiff": 9, f"{M}/MOB/MOB_0001.tiff": 9, f"{M}/MYB/MYB_0001.tiff": 5,
    f"{M}/MYO/MYO_0001.tiff": 3,
}
MATEK_DROPS = {
    (f"{M}/LYT/LYT_0001.tiff", report_lib.LABEL_CONFLICT), (f"{M}/MON/MON_0001.tiff", report_lib.LABEL_CONFLICT),
    (f"{M}/PMB/PMB_0001.tiff", report_lib.EXCLUDED), (f"{M}/KSC/KSC_0001.tiff", report_lib.CORRUPT),
    (f"{M}/NGB/.DS_Store", report_lib.NOT_IMAGE), (f"{M}/XYZ/XYZ_0001.tiff", report_lib.UNKNOWN_LABEL),
}


def write_matek_tree(root):
  m = os.path.join(root, M)
  _write(os.path.join(m, "annotations.dat"), b"path\torig\tre1\tre2\n")
  _save(f"{m}/BAS/BAS_0001.tiff", _noise(1), "TIFF")
  _save(f"{m}/BAS/BAS_0002{SUFFIX}.tiff", _noise(2), "TIFF")
  _save(f"{m}/EBO/EBO_0001.tiff", _noise(3)[..., 0], "TIFF")  # Grayscale.
  rgba = np.concatenate([_noise(4), np.zeros((40, 40, 1), np.uint8)], -1)  # Fully transparent RGBA.
  _save(f"{m}/EOS/EOS_0001.tiff", rgba, "TIFF")
  same = _save(f"{m}/NGS/NGS_0001.tiff", _noise(5), "TIFF")
  _write(f"{m}/NGS/NGS_0002.tiff", same)  # Identical, same class: both kept, one group.
  conflict = _save(f"{m}/LYT/LYT_0001.tiff", _noise(6), "TIFF")
  _write(f"{m}/MON/MON_0001.tiff", conflict)  # Identical, different class: both dropped.
  _save(f"{m}/MON/MON_0002.tiff", _noise(7), "TIFF")
  _save(f"{m}/MOB/MOB_0001.tiff", _noise(8), "TIFF")
  _save(f"{m}/MYB/MYB_0001.tiff", _noise(9), "TIFF")
  _save(f"{m}/MYO/MYO_0001.tiff", _noise(10), "TIFF")
  _save(f"{m}/PMB/PMB_0001.tiff", _noise(11), "TIFF")
  _write(f"{m}/KSC/KSC_0001.tiff", b"II*\x00" + b"\x13" * 64)  # TIFF signature, corrupt body.
  _write(f"{m}/NGB/.DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 30)
  _save(f"{m}/XYZ/XYZ_0001.tiff", _noise(12), "TIFF")


@pytest.fixture(scope="module")
def matek(tmp_path_factory):
  manual = tmp_path_factory.mktemp("matek_manual")
  write_matek_tree(manual)
  data_dir = tmp_path_factory.mktemp("matek_data")
  registry.build("matek19", data_dir=data_dir, manual_dir=manual, verbose=False, image_size=S, fov_um=2.0)
  return registry.open_domain("matek19", data_dir=data_dir, image_size=S, fov_um=2.0), manual


def test_matek_labels_and_alignment(matek):
  domain, _ = matek
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == MATEK_KEPT
  _check_alignment(domain)


def test_matek_report(matek):
  domain, _ = matek
  report = _report(domain)
  assert _drops(report) == MATEK_DROPS
  assert report["unknown_labels"] == {"XYZ": [f"{M}/XYZ/XYZ_0001.tiff"]}
  assert report["ignored"] == [f"{M}/annotations.dat"]
  assert report["num_examples"] == 10
  assert report["counts"]["monocyte"] == 2 and report["counts"]["neutrophil_segmented"] == 2
  assert report["crop_px"] == {"13.8": 28}  # round(2 um * 13.8 px/um).
  assert report["options"]["image_size"] == S and report["options"]["fov_um"] == 2.0
  conflicts = [g for g in report["duplicate_groups"] if g["conflict"]]
  assert [sorted(g["paths"]) for g in conflicts] == [[f"{M}/LYT/LYT_0001.tiff", f"{M}/MON/MON_0001.tiff"]]
  assert domain.directory.endswith(os.path.join("matek19", "s16-fov2", "1.1.0"))


def test_matek_groups_are_sha1_and_shared_by_identical_files(matek):
  domain, manual = matek
  groups = dict(zip(domain.paths.tolist(), domain.groups.tolist()))
  assert groups[f"{M}/NGS/NGS_0001.tiff"] == groups[f"{M}/NGS/NGS_0002.tiff"]
  assert len(set(groups.values())) == len(groups) - 1
  import hashlib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(manual, f"{M}/MYO/MYO_0001.tiff"), "rb") as f:
    assert groups[f"{M}/MYO/MYO_0001.tiff"] == hashlib.sha1(f.read()).hexdigest()


def test_matek_pixels_are_the_um_crop(matek):
  domain, manual = matek
  path = f"{M}/BAS/BAS_0002{SUFFIX}.tiff"
  source = imaging.read_image(os.path.join(manual, path))
  expected = np.asarray(Image.fromarray(source[6:34, 6:34]).resize((S, S), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(_record(domain, path)["image"], expected)
  assert _record(domain, path)["px_per_um"] == np.float32(13.8)
  gray = _record(domain, f"{M}/EBO/EBO_0001.tiff")["image"]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(_record(domain, f"{M}/EOS/EOS_0001.tiff")["image"], 255)  # Transparent.


def test_matek_strict_names_the_unknown_folder(matek, tmp_path):
  _, manual = matek
  with pytest.raises(base_builder.UnknownLabelError, match=r"XYZ_0001.tiff: unknown folder label 'XYZ'"):
    registry.build("matek19", data_dir=tmp_path, manual_dir=manual, verbose=False, image_size=S, fov_um=2.0,
                   strict=True)


def test_matek_root_may_be_the_dataset_folder_itself(matek, tmp_path):
  _, manual = matek
  domain_dir = registry.build("matek19", data_dir=tmp_path, manual_dir=os.path.join(manual, M),
                              verbose=False, image_size=8, fov_um=2.0)
  domain = registry.open_domain("matek19", data_dir=tmp_path, image_size=8, fov_um=2.0)
  assert domain.directory == domain_dir
  assert sorted(domain.paths.tolist()) == sorted(p[len(M) + 1:] for p in MATEK_KEPT)  # Relative to manual_dir.
  _check_alignment(domain, size=8)


def test_missing_class_folders_is_a_clear_error(tmp_path):
  (tmp_path / "manual" / "random").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="AML-Cytomorphology_LMU/<CODE>"):
    registry.build("matek19", data_dir=tmp_path / "d", manual_dir=tmp_path / "manual", verbose=False)


# --- Acevedo_20 ------------------------------------------------------------------------------------------

A = "PBC_dataset_normal_DIB"
STD, ODD1, ODD2 = (363, 360), (369, 366), (360, 360)  # (height, width): 360x363, 366x369, 360x360 (WxH).
ACEVEDO_KEPT = {
    f"{A}/basophil/BA_100.jpg": 0, f"{A}/basophil/BA_101.jpg": 0, f"{A}/eosinophil/EO_200.jpg": 1,
    f"{A}/eosinophil/EO_201.jpg": 1, f"{A}/erythroblast/ERB_300.jpg": 2, f"{A}/ig/MY_400.jpg": 5,
    f"{A}/ig/PMY_401.jpg": 4, f"{A}/ig/MMY_402.jpg": 6, f"{A}/lymphocyte/LY_500.jpg": 10,
    f"{A}/monocyte/MO_600.jpg": 9, f"{A}/neutrophil/SNE_700.jpg": 8, f"{A}/neutrophil/SNE_701.jpg": 8,
    f"{A}/neutrophil/BNE_702.jpg": 7,
}
ACEVEDO_DROPS = {
    (f"{A}/ig/IG_403.jpg", report_lib.EXCLUDED), (f"{A}/neutrophil/NEUTROPHIL_703.jpg", report_lib.EXCLUDED),
    (f"{A}/platelet/PLATELET_800.jpg", report_lib.EXCLUDED),
    (f"{A}/monocyte/XX_601.jpg", report_lib.UNKNOWN_LABEL),
    (f"{A}/neutrophil/.DS_Store.jpg", report_lib.NOT_IMAGE),
    (f"{A}/neutrophil/SNE_704.jpg", report_lib.CORRUPT),
    (f"{A}/basophil/BA_102.jpg", report_lib.LABEL_CONFLICT),
    (f"{A}/eosinophil/EO_202.jpg", report_lib.LABEL_CONFLICT),
}
ODD_PATHS = {f"{A}/basophil/BA_101.jpg", f"{A}/eosinophil/EO_200.jpg"}


def write_acevedo_tree(root):
  a = os.path.join(root, A)
  jpg = lambda rel, seed, shape=STD: _save(f"{a}/{rel}", _smooth(seed, *shape), "JPEG", quality=90)
  jpg("basophil/BA_100.jpg", 1)
  jpg("basophil/BA_101.jpg", 2, ODD1)
  jpg("eosinophil/EO_200.jpg", 3, ODD2)
  jpg("eosinophil/EO_201.jpg", 4)
  jpg("erythroblast/ERB_300.jpg", 5)
  jpg("ig/MY_400.jpg", 6)
  jpg("ig/PMY_401.jpg", 7)
  jpg("ig/MMY_402.jpg", 8)
  jpg("ig/IG_403.jpg", 9)
  _save(f"{a}/lymphocyte/LY_500.jpg", _smooth(10, *STD)[..., 0], "JPEG")  # Grayscale JPEG.
  jpg("monocyte/MO_600.jpg", 11)
  jpg("monocyte/XX_601.jpg", 12)
  same = jpg("neutrophil/SNE_700.jpg", 13)
  _write(f"{a}/neutrophil/SNE_701.jpg", same)
  jpg("neutrophil/BNE_702.jpg", 14)
  jpg("neutrophil/NEUTROPHIL_703.jpg", 15)
  _write(f"{a}/neutrophil/.DS_Store.jpg", b"\x00\x00\x00\x01Bud1" + b"\x00" * 30)
  truncated = jpg("neutrophil/SNE_704.jpg", 16)
  _write(f"{a}/neutrophil/SNE_704.jpg", truncated[: len(truncated) // 2])
  jpg("platelet/PLATELET_800.jpg", 17)
  conflict = jpg("basophil/BA_102.jpg", 18)
  _write(f"{a}/eosinophil/EO_202.jpg", conflict)


@pytest.fixture(scope="module")
def acevedo(tmp_path_factory):
  manual = tmp_path_factory.mktemp("acevedo_manual")
  write_acevedo_tree(manual)
  data_dir = tmp_path_factory.mktemp("acevedo_data")
  for drop in (False, True):
    registry.build("acevedo20", data_dir=data_dir, manual_dir=manual, verbose=False, image_size=S,
                   drop_odd_sized=drop)
  return {drop: registry.open_domain("acevedo20", data_dir=data_dir, image_size=S, drop_odd_sized=drop)
          for drop in (False, True)}


def test_acevedo_labels_report_and_alignment(acevedo):
  domain = acevedo[False]
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == ACEVEDO_KEPT
  _check_alignment(domain)
  report = _report(domain)
  assert _drops(report) == ACEVEDO_DROPS
  assert report["unknown_labels"] == {"XX": [f"{A}/monocyte/XX_601.jpg"]}
  assert report["crop_px"] == {"10": 250}
  assert report["native_sizes"] == {"360x363": 18, "366x369": 1, "360x360": 1}
  groups = dict(zip(domain.paths.tolist(), domain.groups.tolist()))
  assert groups[f"{A}/neutrophil/SNE_700.jpg"] == groups[f"{A}/neutrophil/SNE_701.jpg"]
  assert domain.directory.endswith(os.path.join("acevedo20", "s16-fov25", "1.1.0"))


def test_acevedo_drop_odd_sized(acevedo):
  kept, dropped = acevedo[False], acevedo[True]
  assert kept.directory != dropped.directory
  assert dropped.directory.endswith(os.path.join("acevedo20", "s16-fov25-dropodd", "1.1.0"))
  expected = {p: c for p, c in ACEVEDO_KEPT.items() if p not in ODD_PATHS}
  assert dict(zip(dropped.paths.tolist(), dropped.labels.tolist())) == expected
  _check_alignment(dropped)
  odd = {(p, report_lib.ODD_SIZED) for p in ODD_PATHS}
  assert _drops(_report(dropped)) == ACEVEDO_DROPS | odd


def test_acevedo_pixels_are_the_centre_250(acevedo, tmp_path):
  record = _record(acevedo[False], f"{A}/ig/MY_400.jpg")
  jpeg = imaging.read_image_bytes(_save(str(tmp_path / "y.jpg"), _smooth(6, *STD), "JPEG", quality=90))
  # 360 wide x 363 high at 10 px/um: rows 56:306, columns 55:305, then Lanczos to S.
  expected = np.asarray(Image.fromarray(jpeg[56:306, 55:305]).resize((S, S), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(record["image"], expected)


# --- INT_20 and MLL23 ------------------------------------------------------------------------------------


def test_int20(tmp_path):
  root = tmp_path / "manual" / "INT_20"
  files = {"01-NORMO/a.tif": 2, "08-LYMPH-neo/b.tif": 11, "12-LYMPH-reaktiv/c.tif": 11,
           "14-LYMPH-typ/d.tiff": 10, "17-Kernschatten/e.tif": 12, "04-LGL/f.tif": None, "99-FOO/g.tif": None}
  for i, rel in enumerate(files):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / rel, _noise(100 + i), photometric="rgb")
  registry.build("int20", data_dir=tmp_path / "d", manual_dir=tmp_path / "manual", verbose=False,
                 image_size=S, fov_um=2.0)
  domain = registry.open_domain("int20", data_dir=tmp_path / "d", image_size=S, fov_um=2.0)
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == {
      f"INT_20/{k}": v for k, v in files.items() if v is not None}
  _check_alignment(domain)
  report = _report(domain)
  assert _drops(report) == {("INT_20/04-LGL/f.tif", report_lib.EXCLUDED),
                            ("INT_20/99-FOO/g.tif", report_lib.UNKNOWN_LABEL)}
  assert report["crop_px"] == {"11.52": 23}  # round(2 * 11.52).


def test_mll23(tmp_path):
  root = tmp_path / "manual"
  files = {"normoblast/1.tif": 2, "lymphocyte/2.tif": 10, "lymphocyte_neoplastic/3.tif": 11,
           "lymphocyte_reactive/4.tif": 11, "neutrophil_band/5.tif": 7, "myeloblast/6.tif": 3,
           "hairy_cell/7.tif": None, "plasma_cell/8.tif": None, "lymphocyte_large_granular/9.tif": None,
           "promyelocyte_atypical/10.tif": None}
  for i, rel in enumerate(files):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / rel, _noise(200 + i), photometric="rgb")
  registry.build("mll23", data_dir=tmp_path / "d", manual_dir=root, verbose=False, image_size=S, fov_um=2.0)
  domain = registry.open_domain("mll23", data_dir=tmp_path / "d", image_size=S, fov_um=2.0)
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == {
      k: v for k, v in files.items() if v is not None}
  _check_alignment(domain)
  assert {r for _, r in _drops(_report(domain))} == {report_lib.EXCLUDED}
  assert len(_report(domain)["dropped"]) == 4


# --- labelled_folders ------------------------------------------------------------------------------------


def test_labelled_folders_folder_mode(tmp_path):
  manual = tmp_path / "lab"
  for i, (folder, n) in enumerate([("Neutrophil", 2), ("Lymph", 1), ("Artefact", 1), ("Other", 1)]):
    for j in range(n):
      _save(str(manual / folder / f"img{j}.png"), _noise(300 + 10 * i + j), "PNG")
  table = tmp_path / "map.csv"
  table.write_text("key,class\nNeutrophil,neutrophil_segmented\nLymph,lymphocyte_typical\nArtefact,drop\n")
  options = dict(mapping=str(table), px_per_um=13.8, image_size=S, fov_um=2.0)
  path = registry.build("labelled_folders/mylab", data_dir=tmp_path / "d", manual_dir=manual, verbose=False,
                        **options)
  assert os.path.basename(os.path.dirname(path)).startswith("mylab-px13.8-folder-map")
  domain = registry.open_domain("labelled_folders/mylab", data_dir=tmp_path / "d", **options)
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == {
      "Neutrophil/img0.png": 8, "Neutrophil/img1.png": 8, "Lymph/img0.png": 10}
  _check_alignment(domain)
  report = _report(domain)
  assert _drops(report) == {("Artefact/img0.png", report_lib.EXCLUDED), ("Other/img0.png", report_lib.UNKNOWN_LABEL)}
  assert report["dataset"] == "labelled_folders/mylab"
  # Another table (same file name, different content) or resolution gives another directory.
  table.write_text("Neutrophil,neutrophil_banded\nLymph,lymphocyte_typical\n")
  assert registry.make_builder("labelled_folders/mylab", data_dir=tmp_path / "d", **options).data_path != \
      domain.directory
  options2 = dict(options, mapping={"Neutrophil": "neutrophil_segmented", "Lymph": "lymphocyte_typical",
                                    "Artefact": None}, px_per_um=10.0)
  assert "px10-" in str(registry.make_builder("labelled_folders/mylab", data_dir=tmp_path, **options2).data_path)


def test_labelled_folders_prefix_mode_and_builtin_table(tmp_path):
  manual = tmp_path / "lab"
  _save(str(manual / "BA_1.jpg"), _smooth(1, 40, 40), "JPEG")
  _save(str(manual / "sub" / "SNE_2.jpg"), _smooth(2, 40, 40), "JPEG")
  _save(str(manual / "sub" / "PLATELET_3.jpg"), _smooth(3, 40, 40), "JPEG")
  options = dict(mapping="acevedo20", px_per_um=10.0, label_source="prefix", image_size=S, fov_um=2.0)
  registry.build("labelled_folders/flat", data_dir=tmp_path / "d", manual_dir=manual, verbose=False, **options)
  domain = registry.open_domain("labelled_folders/flat", data_dir=tmp_path / "d", **options)
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == {"BA_1.jpg": 0, "sub/SNE_2.jpg": 8}


def test_labelled_folders_option_errors(tmp_path):
  with pytest.raises(ValueError, match="px_per_um"):
    registry.make_builder("labelled_folders/x", data_dir=tmp_path, mapping={"a": "basophil"})
  with pytest.raises(ValueError, match="lab name"):
    registry.make_builder("labelled_folders", data_dir=tmp_path, mapping={"a": "basophil"}, px_per_um=1.0)
  with pytest.raises(ValueError, match="lab name must match"):
    registry.make_builder("labelled_folders/a b", data_dir=tmp_path, mapping={"a": "basophil"}, px_per_um=1.0)


# --- synthetic_wbc ---------------------------------------------------------------------------------------


def _stub_generator():
  """A tiny stand-in for data_pipelines.synthetic_wbc.generator with the same API."""
  module = types.ModuleType("stub_generator")
  module.DOMAINS = ("matek19_like", "acevedo20_like", "int20_like")
  module.DOMAIN_SPECS = {}
  px = {"matek19_like": 13.8, "acevedo20_like": 10.0, "int20_like": 11.52}
  labels = ("basophil", "monocyte", "smudge_cell")

  def domain_class_counts(domain, scale, min_per_class=4):
    del domain
    return {c: max(min_per_class, int(scale * 100)) for c in labels}

  def generate_domain(domain, *, scale=0.02, seed=0):
    for label, n in domain_class_counts(domain, scale).items():
      for i in range(n):
        image = np.random.default_rng([seed, labels.index(label), i]).integers(0, 256, (40, 30, 3), np.uint8)
        yield types.SimpleNamespace(id=f"{domain}/{label}/{i:05d}", image=image, label=label,
                                    px_per_um=px[domain])

  module.domain_class_counts, module.generate_domain = domain_class_counts, generate_domain
  return module


@pytest.fixture
def stub_generator(monkeypatch):
  module = _stub_generator()
  monkeypatch.setitem(sys.modules, "data_pipelines.synthetic_wbc.generator", module)
  return module


def test_synthetic_with_stub_generator(stub_generator, tmp_path):
  domain = registry.open_domain("synthetic_wbc/int20_like", data_dir=tmp_path, build_if_missing=True,
                                image_size=S, fov_um=2.0, scale=0.05, seed=3)
  assert domain.directory.endswith(os.path.join("synthetic_wbc", "int20_like-scale0.05-seed3-s16-fov2", "1.1.0"))
  index = {"basophil": 0, "monocyte": 9, "smudge_cell": 12}
  expected = {c.id: index[c.label] for c in stub_generator.generate_domain("int20_like", scale=0.05, seed=3)}
  assert dict(zip(domain.paths.tolist(), domain.labels.tolist())) == expected
  assert len(domain) == 15
  _check_alignment(domain)
  cell = next(stub_generator.generate_domain("int20_like", scale=0.05, seed=3))
  record = _record(domain, cell.id)
  np.testing.assert_array_equal(
      record["image"], imaging.crop_to_fov(cell.image, px_per_um=11.52, fov_um=2.0, size=S))
  assert record["original_label"] == b"basophil" and record["px_per_um"] == np.float32(11.52)
  report = _report(domain)
  assert report["dataset"] == "synthetic_wbc/int20_like" and report["dropped"] == []
  assert report["found_counts"] == {"basophil": 5, "monocyte": 5, "smudge_cell": 5}
  assert report["native_sizes"] == {"30x40": 15}


def test_synthetic_options_and_errors(stub_generator, tmp_path):
  del stub_generator
  a = registry.make_builder("synthetic_wbc/matek19_like", data_dir=tmp_path, scale=0.02)
  b = registry.make_builder("synthetic_wbc/matek19_like", data_dir=tmp_path, scale=0.05)
  c = registry.make_builder("synthetic_wbc/matek19_like", data_dir=tmp_path, scale=0.02, seed=1)
  assert len({a.data_path, b.data_path, c.data_path}) == 3
  assert a.data_path.parent.name == "matek19_like-scale0.02-seed0-s256-fov25"
  with pytest.raises(ValueError, match="unknown synthetic domain 'foo_like'"):
    registry.make_builder("synthetic_wbc/foo_like", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no manual_dir"):
    registry.build("synthetic_wbc/matek19_like", data_dir=tmp_path, manual_dir=tmp_path)
  with pytest.raises(TypeError, match="drop_odd_sized"):
    registry.make_builder("synthetic_wbc/matek19_like", data_dir=tmp_path, drop_odd_sized=True)


def test_synthetic_with_real_generator(tmp_path):
  """The real generator at its smallest size (4 images per class) through the same builder."""
  generator = pytest.importorskip("data_pipelines.synthetic_wbc.generator")
  domain = registry.open_domain("synthetic_wbc/int20_like", data_dir=tmp_path, build_if_missing=True,
                                image_size=S, scale=1e-4)
  counts = generator.domain_class_counts("int20_like", 1e-4)
  assert len(domain) == sum(counts.values())
  _check_alignment(domain)
  from wbcdg_jax.classes import class_index  # pylint: disable=import-outside-toplevel
  assert sorted(domain.labels.tolist()) == sorted(class_index(c) for c, n in counts.items() for _ in range(n))


# --- Bad data: one test per case, on one labelled_folders tree --------------------------------------------

BAD_TABLE = {"Neutro": "neutrophil_segmented", "Lymph": "lymphocyte_typical", "Mono": "monocyte",
             "Baso": "basophil", "Eos": "eosinophil", "Junk": "drop"}
BAD_OPTIONS = dict(px_per_um=10.0, image_size=S, fov_um=2.0)  # 20 px field of view of 40 px images
N_DISTINCT, N_COPIES = 8, 4  # per class, in Neutro and Lymph: copies are byte-identical to distinct files


def write_bad_tree(root):
  """A lab folder with every kind of bad data next to good images."""
  seed = 400
  for folder in ("Neutro", "Lymph"):
    for i in range(N_DISTINCT):
      data = _save(str(root / folder / f"{folder}_{i}.tif"), _noise(seed := seed + 1), "TIFF")
      if i < N_COPIES:
        _write(str(root / folder / f"{folder}_{i}_copy.tif"), data)
  truncated_tiff = _save(str(root / "Lymph" / "cut.tif"), _noise(500), "TIFF")
  _write(str(root / "Lymph" / "cut.tif"), truncated_tiff[: len(truncated_tiff) // 2])
  truncated_jpeg = _save(str(root / "Lymph" / "cut.jpg"), _smooth(501, 40, 40), "JPEG")
  _write(str(root / "Lymph" / "cut.jpg"), truncated_jpeg[: len(truncated_jpeg) // 2])
  _write(str(root / "Neutro" / "notes.png"), b"written by the microscope software\n")
  _write(str(root / "Neutro" / "empty.jpg"), b"")
  os.makedirs(root / "Mono")  # an empty class folder
  _write(str(root / "Baso" / "readme.txt"), b"no basophils on these slides\n")  # no image either
  _save(str(root / "Plasma" / "p0.png"), _noise(502), "PNG")  # folder not in the table
  _save(str(root / "Eos" / "gray.png"), _noise(503)[..., 0], "PNG")
  _save(str(root / "Eos" / "rgba.png"), np.concatenate([_noise(504), np.full((40, 40, 1), 0, np.uint8)], -1), "PNG")
  _save(str(root / "Eos" / "palette.png"), Image.fromarray(_noise(505)).convert("P"), "PNG")
  _save(str(root / "Eos" / "rgb.png"), _noise(506), "PNG")
  tifffile.imwrite(root / "Eos" / "gray16.tif", (_noise(507)[..., 0].astype(np.uint16) * 257))
  conflict = _save(str(root / "Neutro" / "same.tif"), _noise(508), "TIFF")
  _write(str(root / "Lymph" / "same.tif"), conflict)  # identical bytes, another class


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
  manual = tmp_path_factory.mktemp("bad_manual")
  write_bad_tree(manual)
  data_dir = tmp_path_factory.mktemp("bad_data")
  table = tmp_path_factory.mktemp("bad_table") / "map.json"
  table.write_text(json.dumps(BAD_TABLE))
  options = dict(BAD_OPTIONS, mapping=str(table))
  handler, logger = _Records(), logging.getLogger(base_builder.__name__)
  logger.addHandler(handler)
  try:
    registry.build("labelled_folders/bad", data_dir=data_dir, manual_dir=manual, verbose=False, **options)
  finally:
    logger.removeHandler(handler)
  domain = registry.open_domain("labelled_folders/bad", data_dir=data_dir, **options)
  return types.SimpleNamespace(domain=domain, report=_report(domain), manual=manual, table=table, options=options,
                               log=handler.messages)


def test_bad_data_build_keeps_exactly_the_good_images(bad):
  kept = set(bad.domain.paths.tolist())
  expected = ({f"{f}/{f}_{i}.tif" for f in ("Neutro", "Lymph") for i in range(N_DISTINCT)}
              | {f"{f}/{f}_{i}_copy.tif" for f in ("Neutro", "Lymph") for i in range(N_COPIES)}
              | {f"Eos/{n}" for n in ("gray.png", "rgba.png", "palette.png", "rgb.png", "gray16.tif")})
  assert kept == expected
  _check_alignment(bad.domain)
  assert bad.report["num_examples"] == len(expected)
  assert bad.report["dropped_by_reason"] == {report_lib.CORRUPT: 2, report_lib.NOT_IMAGE: 3,
                                             report_lib.UNKNOWN_LABEL: 1, report_lib.LABEL_CONFLICT: 2}


def test_bad_data_corrupt_images_are_skipped_and_reported_with_the_reason(bad):
  corrupt = {d["path"]: d["detail"] for d in bad.report["dropped"] if d["reason"] == report_lib.CORRUPT}
  assert set(corrupt) == {"Lymph/cut.tif", "Lymph/cut.jpg"}
  assert all("truncated" in detail.lower() for detail in corrupt.values()), corrupt
  assert any("dropped 8 files" in m for m in bad.log)


def test_bad_data_non_image_files_with_an_image_extension_are_reported(bad):
  assert {("Neutro/notes.png", report_lib.NOT_IMAGE), ("Neutro/empty.jpg", report_lib.NOT_IMAGE),
          ("Baso/readme.txt", report_lib.NOT_IMAGE)} <= _drops(bad.report)


def test_bad_data_empty_class_folders_are_reported_as_classes_with_no_image(bad):
  assert bad.report["empty_folders"] == ["Baso", "Mono"]
  assert bad.report["found_counts"]["Mono"] == 0 and bad.report["found_counts"]["Baso"] == 0
  assert bad.report["counts"]["monocyte"] == 0 and bad.report["counts"]["basophil"] == 0
  assert any("folders without any image file: Baso, Mono" in m for m in bad.log)
  assert "EMPTY FOLDERS (no image file): Baso, Mono" in report_lib.BuildReport.load(bad.domain.directory).format()


def test_bad_data_unknown_folder_is_dropped_and_named_with_the_table(bad):
  assert bad.report["unknown_labels"] == {"Plasma": ["Plasma/p0.png"]}
  assert bad.report["label_table"] == os.path.abspath(bad.table)
  text = report_lib.BuildReport.load(bad.domain.directory).format()
  assert f"UNKNOWN LABELS (not in the label table {os.path.abspath(bad.table)}, dropped): 'Plasma' (1 files)" in text


def test_bad_data_unknown_folder_in_strict_mode_names_folder_and_table(bad, tmp_path):
  with pytest.raises(base_builder.UnknownLabelError) as info:
    registry.build("labelled_folders/bad", data_dir=tmp_path, manual_dir=bad.manual, verbose=False, strict=True,
                   **bad.options)
  message = str(info.value)
  assert "unknown folder label 'Plasma'" in message and os.path.abspath(bad.table) in message
  assert "Baso, Eos, Junk, Lymph, Mono, Neutro" in message


def test_bad_data_grayscale_rgba_palette_and_16_bit_are_converted_and_counted(bad):
  assert bad.report["source_modes"] == {"RGB": 2 * (N_DISTINCT + N_COPIES) + 1, "L": 1, "RGBA": 1, "P": 1,
                                        "I;16": 1}
  assert bad.report["converted_to_rgb"] == {"I;16": 1, "L": 1, "P": 1, "RGBA": 1}
  assert "converted to RGB (source mode: images): I;16: 1, L: 1, P: 1, RGBA: 1" in \
      report_lib.BuildReport.load(bad.domain.directory).format()
  for name in ("gray.png", "gray16.tif"):
    image = _record(bad.domain, f"Eos/{name}")["image"]
    assert image.shape == (S, S, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
  np.testing.assert_array_equal(_record(bad.domain, "Eos/rgba.png")["image"], 255)  # transparent -> white


def test_bad_data_identical_files_share_a_group_and_never_straddle_a_split(bad):
  from data_pipelines import folds  # pylint: disable=import-outside-toplevel
  domain = bad.domain
  groups = dict(zip(domain.paths.tolist(), domain.groups.tolist()))
  for folder in ("Neutro", "Lymph"):
    for i in range(N_COPIES):
      assert groups[f"{folder}/{folder}_{i}.tif"] == groups[f"{folder}/{folder}_{i}_copy.tif"]
  assert len(set(groups.values())) == len(groups) - 2 * N_COPIES
  for seed in range(4):
    for fold in range(3):
      split = folds.split_domain(domain, num_folds=3, fold=fold, seed=seed)
      assert not set(domain.groups[split.train]) & set(domain.groups[split.val]), (seed, fold)


def test_bad_data_identical_files_with_different_labels_are_dropped_and_listed(bad):
  assert {("Neutro/same.tif", report_lib.LABEL_CONFLICT), ("Lymph/same.tif", report_lib.LABEL_CONFLICT)} <= \
      _drops(bad.report)
  conflicts = [g for g in bad.report["duplicate_groups"] if g["conflict"]]
  assert len(conflicts) == 1
  labels = dict(zip(conflicts[0]["paths"], conflicts[0]["original_labels"]))
  assert labels == {"Lymph/same.tif": "Lymph", "Neutro/same.tif": "Neutro"}
  assert conflicts[0]["classes"] == ["lymphocyte_typical", "neutrophil_segmented"]
  assert any("byte-identical files with different labels" in m for m in bad.log)


@pytest.mark.parametrize("px_per_um", [0.0, -11.5, float("inf"), float("nan")])
def test_bad_data_px_per_um_that_is_not_a_positive_number_is_refused(px_per_um, tmp_path):
  with pytest.raises(ValueError, match="builder option px_per_um"):
    registry.make_builder("labelled_folders/bad", data_dir=tmp_path, mapping=BAD_TABLE, px_per_um=px_per_um)


@pytest.mark.parametrize("px_per_um, fov_um, fragment", [
    (0.087, 2.0, "px_per_um=0.087 with fov_um=2 gives a 2 um field of view of 1 px, tiny"),  # um per px
    (1.0, 2.0, "of 2 px, tiny"),
    (115.0, 2.0, "of 230 px, more than 2 times the images"),  # a factor 10 too large
])
def test_bad_data_implausible_px_per_um_fails_before_writing(bad, tmp_path, px_per_um, fov_um, fragment):
  options = dict(bad.options, px_per_um=px_per_um, fov_um=fov_um)
  with pytest.raises(base_builder.ImplausibleResolutionError) as info:
    registry.build("labelled_folders/bad", data_dir=tmp_path, manual_dir=bad.manual, verbose=False, **options)
  assert fragment in str(info.value) and "typically 40 px" in str(info.value)
  assert "builder option px_per_um" in str(info.value)
  assert not registry.make_builder("labelled_folders/bad", data_dir=tmp_path, **options).data_path.exists()


def test_bad_data_field_of_view_larger_than_builtin_images_names_fov_um(tmp_path):
  write_matek_tree(tmp_path / "manual")
  with pytest.raises(base_builder.ImplausibleResolutionError, match=r"13.8 px/um; check the builder option fov_um"):
    registry.build("matek19", data_dir=tmp_path / "d", manual_dir=tmp_path / "manual", verbose=False,
                   image_size=S, fov_um=25.0)  # 345 px of 40 px images
