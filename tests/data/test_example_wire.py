"""example_wire finds a bytes feature in serialized tf.train.Examples exactly where protobuf would, or declines."""

import numpy as np
import pytest
from google.protobuf import message
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2

from data_pipelines import example_wire, pipeline

IMAGE = bytes(range(256)) * 3  # 768 bytes: a 16 x 16 x 3 image, long enough for two-byte lengths


def _varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value) -> bytes:
  """A serialized Feature: bytes -> one-value bytes_list; list of bytes -> bytes_list; list of ints -> int64_list;
  float -> float_list."""
  if isinstance(value, bytes):
    value = [value]
  if isinstance(value, float):
    return tf_feature_pb2.Feature(float_list=tf_feature_pb2.FloatList(value=[value])).SerializeToString()
  if value and isinstance(value[0], int):
    return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=value)).SerializeToString()
  return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=value)).SerializeToString()


def _entry(key: str, value) -> bytes:
  """One map entry of Features.feature, as a field of Features (tag 0x0A)."""
  return _len_field(1, _len_field(1, key.encode()) + _len_field(2, _feature(value)))


def _example(*entries: bytes, extra: bytes = b"") -> bytes:
  """An Example whose Features holds `entries` in this order; `extra` follows at the top level."""
  return _len_field(1, b"".join(entries)) + extra


def _check(record: bytes, found: bool | None = None, key: str = "image",
           damaged: bool = False) -> tuple[int, int] | None:
  """Where the walk finds a span, protobuf parses the record and holds exactly that one value; in a `damaged`
  record protobuf may also reject a fault the walk does not read (another key's UTF-8, another feature's
  contents), and otherwise agrees."""
  span = example_wire.bytes_feature_span(record, key)
  try:
    parsed = tf_example_pb2.Example.FromString(record)
  except message.DecodeError:
    parsed = None
  if span is not None and not (damaged and parsed is None):
    assert parsed is not None
    values = parsed.features.feature[key].bytes_list.value
    assert len(values) == 1 and record[span[0]:span[0] + span[1]] == values[0]
  if found is not None:
    assert (span is not None) == found, span
  return span


BUILDER_FEATURES = dict(px_per_um=13.9, label=[3], path=b"matek19_like/lym_0001.png", group=b"845de02a",
                        original_label=b"lymphocyte_typical", image=IMAGE)


@pytest.mark.parametrize("image_at", [0, 3, 5])
def test_builder_layout_is_found_wherever_the_image_lies(image_at):
  others = [_entry(k, v) for k, v in BUILDER_FEATURES.items() if k != "image"]
  record = _example(*others[:image_at], _entry("image", IMAGE), *others[image_at:])
  span = _check(record, found=True)
  assert span[1] == len(IMAGE)
  # protobuf's own serialization of the same features (its map order) as well
  example = tf_example_pb2.Example()
  for k, v in BUILDER_FEATURES.items():
    example.features.feature[k].CopyFrom(tf_feature_pb2.Feature.FromString(_feature(v)))
  _check(example.SerializeToString(), found=True)


def test_uncommon_but_valid_layouts_are_found():
  key_entry = lambda key: _len_field(1, key.encode())  # pylint: disable=unnecessary-lambda-assignment
  value_entry = _len_field(2, _feature(IMAGE))
  long_key = _entry("k" * 300, b"x")  # a key longer than 127 bytes: two-byte length
  value_first = _len_field(1, value_entry + key_entry("image"))  # the entry's fields in the other order
  for record in (_example(long_key, _entry("image", IMAGE)), _example(value_first),
                 _example(_entry("label", [1]), _entry("image", IMAGE),  # unknown fields after Features
                          extra=_varint(2 << 3) + _varint(300) + _varint(15 << 3 | 1) + bytes(8)
                          + _len_field(100, b"xyz") + _varint(20 << 3 | 5) + bytes(4)),
                 _example(_entry("image", b""))):  # an empty value is one value
    _check(record, found=True)


def test_a_key_seen_again_overrides_as_in_protobuf():
  first, second = b"A" * 50, b"B" * 70
  record = _example(_entry("image", first), _entry("label", [1]), _entry("image", second))
  offset, size = _check(record, found=True)
  assert record[offset:offset + size] == second
  # Features given twice merge (the later map entry wins) where two Examples are concatenated
  merged = _example(_entry("image", first)) + _example(_entry("label", [2]), _entry("image", second))
  offset, size = _check(merged, found=True)
  assert merged[offset:offset + size] == second


@pytest.mark.parametrize("record", [
    _example(_entry("label", [1])),  # no image
    _example(_entry("image", [b"ab", b"cd"])),  # two values
    _example(_entry("image", [1, 2, 3])),  # int64_list
    _example(_entry("image", 1.5)),  # float_list
    _example(_len_field(1, _len_field(1, b"image") + _len_field(2, _feature(IMAGE) + _feature([1])))),  # 2 lists
    _example(_len_field(1, _len_field(1, b"image") + _len_field(2, _feature(b"a")) + _len_field(2, _feature(b"b")))),
    _example(_entry("image", IMAGE))[:-1],  # truncated
    _example(_entry("image", IMAGE), extra=_varint(5 << 3 | 3)),  # a group
    b"\xff\x00 not a protobuf",
    b"",
], ids=["missing", "two values", "int64", "float", "two lists", "value twice", "truncated", "group", "garbage",
        "empty"])
def test_anything_else_is_left_to_protobuf(record):
  _check(record, found=False)


def test_random_examples_agree_with_protobuf():
  rng = np.random.default_rng(0)
  kinds = [lambda: rng.bytes(int(rng.integers(0, 400))), lambda: [int(v) for v in rng.integers(-9, 9, 3)],
           lambda: float(rng.normal()), lambda: [rng.bytes(3), rng.bytes(2)]]
  found = 0
  for _ in range(300):
    keys = list(rng.choice(["image", "label", "path", "k" * 200, "", "imag", "images"], int(rng.integers(0, 6))))
    entries = [_entry(str(k), kinds[int(rng.integers(len(kinds)))]()) for k in keys]
    extra = _len_field(int(rng.integers(2, 3000)), rng.bytes(5)) if rng.random() < 0.3 else b""
    record = _example(*entries, extra=extra)
    one_value = len(tf_example_pb2.Example.FromString(record).features.feature["image"].bytes_list.value) == 1
    found += _check(record, found=one_value) is not None  # undamaged: found exactly where protobuf has one value
    for _ in range(3):  # one byte changed: where both still read the record, they agree
      broken = bytearray(record or b"\x00")
      broken[int(rng.integers(len(broken)))] = int(rng.integers(256))
      _check(bytes(broken), damaged=True)
  assert found > 10


def test_raw_image_is_a_view_into_the_record():
  """The pipeline takes the walk's span without copying: the image is backed by the record's own bytes."""
  image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
  record = _example(_entry("label", [1]), _entry("image", image.tobytes()))
  got = pipeline._raw_image(record, 4)  # pylint: disable=protected-access
  np.testing.assert_array_equal(got, image)
  base = got
  while isinstance(base, np.ndarray):
    base = base.base
  assert base is record
  assert pipeline._raw_image(record, 5) is None  # pylint: disable=protected-access
