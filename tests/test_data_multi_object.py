"""DeepMind multi-object datasets: published TFRecord format, GENESIS protocol.

Each test writes a tiny GZIP TFRecord file with the exact published feature
spec (one byte per element) and reads it back through the pipeline.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import data_pipelines
from data_pipelines import multi_object
from data_pipelines import stream
import test_data_utils as u


def _config(data_dir, name="objects_room", **kw):
  c = multi_object.default_config()
  c.name = name
  c.data_dir = str(data_dir)
  for k, v in kw.items():
    c[k] = v
  return c


def _labels(masks, background):
  """Expected segmentation [H, W]: entity e >= bg -> e - bg + 1."""
  out = np.zeros(masks.shape[1:], np.int32)
  for e in range(background, masks.shape[0]):
    out[masks[e] == 255] = e - background + 1
  return out


@pytest.fixture(scope="module")
def objects_room(tmp_path_factory):
  d = tmp_path_factory.mktemp("mo")
  _, images, masks = u.write_multi_object(str(d), "objects_room", "train", 14)
  return d, images, masks


def test_published_feature_specs():
  """The specs are the upstream readers' (datasets.md 4.1)."""
  shapes = {}
  for (name, variant), v in multi_object.VARIANTS.items():
    spec = multi_object.feature_spec(v)
    shapes[(name, variant)] = (spec["image"].shape, spec["mask"].shape)
    assert spec["image"].dtype.name == spec["mask"].dtype.name == "string"
  assert shapes[("objects_room", "train")] == ([64, 64, 3], [7, 64, 64, 1])
  assert shapes[("objects_room", "six_objects")][1] == [10, 64, 64, 1]
  assert shapes[("clevr_with_masks", "train")] == ([240, 320, 3],
                                                   [11, 240, 320, 1])
  assert shapes[("multi_dsprites", "colored_on_colored")] == (
      [64, 64, 3], [64, 64, 5, 1])
  assert shapes[("multi_dsprites", "binarized")] == ([64, 64, 1],
                                                     [64, 64, 4, 1])
  assert shapes[("tetrominoes", "train")] == ([35, 35, 3], [4, 35, 35, 1])
  clevr = multi_object.feature_spec(
      multi_object.VARIANTS[("clevr_with_masks", "train")])
  assert clevr["color"].dtype.name == "string"  # Byte feature.
  assert clevr["pixel_coords"].shape == [11, 3]


def test_objects_room_splits_labels_and_contract(objects_room):
  d, images, masks = objects_room
  c = _config(d, num_records=14, num_test=3, num_validation=3)
  assert [data_pipelines.num_examples(c, s)
          for s in ("train", "validation", "test")] == [8, 3, 3]
  test = u.batches(c, "test", batch_size=2)
  assert len(test) == 2
  u.check_contract(test[0], batch_size=2, size=64, valid=True)
  np.testing.assert_array_equal(test[1]["valid"], [True, False])
  assert not test[1]["image"][1].any()  # Padding rows are zeros.
  assert u.ids_of(test) == [0, 1, 2]
  assert u.ids_of(u.batches(c, "validation", batch_size=2)) == [3, 4, 5]
  # Train: the rest of the file, each record once per epoch, shuffled.
  train = u.batches(c, "train", batch_size=4, num=4)
  u.check_contract(train[0], batch_size=4, size=64, valid=False)
  ids = u.ids_of(train)
  assert sorted(ids[:8]) == sorted(ids[8:]) == list(range(6, 14))
  assert ids[:8] != ids[8:]  # A new order per epoch.
  # Images and labels: 4 background entities -> 0, object i -> i + 1.
  for b in train[:2]:
    for row in range(4):
      i = int(round(b["image"][row, 0, 0, 0] * 255))
      np.testing.assert_allclose(b["image"][row], images[i] / 255.0,
                                 atol=1e-6)
      np.testing.assert_array_equal(b["segmentation"][row],
                                    _labels(masks[i], 4))
  assert set(np.unique(train[0]["segmentation"])) <= {0, 1, 2, 3}


def test_objects_room_sharding_and_resume(objects_room):
  d, _, _ = objects_room
  c = _config(d, num_records=14, num_test=3, num_validation=3,
              shuffle_buffer=4)
  u.check_sharding(c, "train", batch_size=4, steps=5, repeat=True)
  u.check_sharding(c, "test", batch_size=2, steps=None, repeat=False)
  u.check_resume(c, "train", batch_size=4, start_step=3, repeat=True)
  u.check_resume(c, "test", batch_size=2, start_step=1, repeat=False)
  # A different seed shuffles differently; the same seed repeats.
  a = u.ids_of(u.batches(c, "train", batch_size=8, num=1, seed=1))
  b = u.ids_of(u.batches(c, "train", batch_size=8, num=1, seed=2))
  assert a != b
  assert a == u.ids_of(u.batches(c, "train", batch_size=8, num=1, seed=1))


def test_clevr_crop_192_nearest_resize_128(tmp_path):
  _, images, masks = u.write_multi_object(str(tmp_path), "clevr_with_masks",
                                          "train", 2, flat=True)
  c = _config(tmp_path, "clevr_with_masks", image_size=128, num_records=2,
              num_test=1, num_validation=0)
  b = u.batches(c, "test", batch_size=1)[0]
  u.check_contract(b, batch_size=1, size=128, valid=True)
  # GENESIS: crop rows 24..215, cols 64..255; F.interpolate nearest:
  # source pixel floor(1.5 * i).
  idx = np.floor(np.arange(128) * 1.5).astype(int)
  crop = images[0][24:216, 64:256]
  np.testing.assert_allclose(b["image"][0], crop[idx][:, idx] / 255.0,
                             atol=1e-6)
  labels = _labels(masks[0], 1)[24:216, 64:256]
  np.testing.assert_array_equal(b["segmentation"][0], labels[idx][:, idx])


def test_multi_dsprites_masks_as_stored(tmp_path):
  _, images, masks = u.write_multi_object(str(tmp_path), "multi_dsprites",
                                          "colored_on_colored", 3)
  c = _config(tmp_path, "multi_dsprites", num_records=3, num_test=3,
              num_validation=0)
  b = u.batches(c, "test", batch_size=3)[0]
  for i in range(3):
    np.testing.assert_array_equal(b["segmentation"][i], _labels(masks[i], 1))
  # Binarized: one channel, tiled to RGB.
  _, images, _ = u.write_multi_object(str(tmp_path), "multi_dsprites",
                                      "binarized", 2)
  c.variant = "binarized"
  c.num_records, c.num_test = 2, 2
  b = u.batches(c, "test", batch_size=2)[0]
  np.testing.assert_allclose(b["image"][1],
                             np.repeat(images[1], 3, -1) / 255.0, atol=1e-6)


def test_tetrominoes_resize_to_32(tmp_path):
  _, images, masks = u.write_multi_object(str(tmp_path), "tetrominoes",
                                          "train", 2)
  c = _config(tmp_path, "tetrominoes", image_size=32, num_records=2,
              num_test=2, num_validation=0)
  b = u.batches(c, "test", batch_size=2)[0]
  idx = np.floor(np.arange(32) * np.float32(35 / 32)).astype(int)
  np.testing.assert_allclose(b["image"][0], images[0][idx][:, idx] / 255.0,
                             atol=1e-6)
  np.testing.assert_array_equal(b["segmentation"][1],
                                _labels(masks[1], 1)[idx][:, idx])


def test_test_only_variant_is_counted(tmp_path):
  u.write_multi_object(str(tmp_path), "objects_room", "six_objects", 5)
  c = _config(tmp_path, variant="six_objects")
  assert multi_object.num_examples(c, "test") == 5
  b = u.batches(c, "test", batch_size=8)[0]
  assert b["valid"].sum() == 5
  with pytest.raises(ValueError, match="only split 'test'"):
    multi_object.num_examples(c, "train")


def test_clear_errors(tmp_path, objects_room):
  d, _, _ = objects_room
  # Unknown dataset name.
  with pytest.raises(ValueError, match="Unknown dataset 'objects_rooms'.*"
                     "objects_room"):
    data_pipelines.num_examples(_config(d, "objects_rooms"), "train")
  # Empty data_dir / missing directory / missing file.
  with pytest.raises(FileNotFoundError, match="data.data_dir is empty"):
    multi_object.num_examples(_config(""), "train")
  with pytest.raises(FileNotFoundError, match="(?s)does not exist.*"
                     "multi_object_datasets"):
    multi_object.num_examples(_config(tmp_path / "nope"), "train")
  with pytest.raises(FileNotFoundError, match="objects_room_train.tfrecords"):
    multi_object.num_examples(_config(tmp_path), "train")
  # Unknown variant.
  with pytest.raises(ValueError, match="data.variant='big'"):
    multi_object.num_examples(_config(d, variant="big"), "test")
  # Wrong file for the variant: records of another format.
  wrong = tmp_path / "wrong"
  path, _, _ = u.write_multi_object(str(wrong), "multi_dsprites",
                                    "colored_on_colored", 2)
  os.rename(path, path.replace("colored_on_colored", "binarized"))
  c = _config(wrong, "multi_dsprites", variant="binarized", num_records=2,
              num_test=2, num_validation=0)
  with pytest.raises(stream.DatasetFormatError, match="record 0 is not a "
                     "multi_dsprites"):
    data_pipelines.get_dataset(c, "test", batch_size=2, seed=0)
  # Not GZIP at all.
  bad = tmp_path / "bad" / "objects_room"
  bad.mkdir(parents=True)
  (bad / "objects_room_train.tfrecords").write_bytes(b"hello world" * 10)
  c = _config(tmp_path / "bad", num_records=30, num_test=1, num_validation=1)
  with pytest.raises(stream.DatasetFormatError, match="GZIP"):
    data_pipelines.get_dataset(c, "test", batch_size=2, seed=0)


def test_truncated_file(tmp_path):
  path, _, _ = u.write_multi_object(str(tmp_path), "objects_room",
                                    "six_objects", 6)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) * 2 // 3])
  # Counted (test sets): the count finds the truncation up front.
  c = _config(tmp_path, variant="six_objects")
  with pytest.raises(stream.DatasetFormatError, match="truncated or corrupt"):
    data_pipelines.get_dataset(c, "test", batch_size=2, seed=0)
  # Given count: the stream stops with an error naming the file.
  c.num_records = 6
  ds = data_pipelines.get_dataset(c, "test", batch_size=2, seed=0)
  with pytest.raises(stream.DatasetReadError, match="objects_room_test_six"):
    list(stream.iterate(ds))
  # A wrong record count is caught too.
  u.write_multi_object(str(tmp_path / "ok"), "objects_room", "train", 6)
  c = _config(tmp_path / "ok", num_records=9, num_test=1, num_validation=1)
  ds = data_pipelines.get_dataset(c, "train", batch_size=2, seed=0)
  with pytest.raises(stream.DatasetReadError, match="expected to contain 7"):
    list(stream.iterate(ds.take(10)))


# Foreground objects (non-empty masks after the 4 background entities of
# Objects Room) of each record of the CLEVR6-style filter tests.
_OBJECTS = [3, 1, 0, 2, 3, 2, 1, 3, 0, 1, 2, 3, 3, 1, 2, 0]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
  d = tmp_path_factory.mktemp("clevr6")
  _, images, masks = u.write_multi_object(
      str(d), "objects_room", "train", len(_OBJECTS),
      visible=[4 + k for k in _OBJECTS])
  return d, images, masks


def test_max_objects_filter_defines_the_splits(filtered):
  """CLEVR6 protocol: only scenes with <= max_objects objects; the splits
  (first num_test kept records, next num_validation, the rest) count kept
  records, and so do num_examples, the padding and the training epochs."""
  d, images, masks = filtered
  kept = [i for i, k in enumerate(_OBJECTS) if k <= 2]  # 11 of 16 records.
  v = multi_object.VARIANTS[("objects_room", "train")]
  records = stream.tf().data.TFRecordDataset(
      str(d / "objects_room" / "objects_room_train.tfrecords"),
      compression_type="GZIP")
  assert [int(multi_object.num_objects(r, v, 4))
          for r in records] == _OBJECTS
  c = _config(d, max_objects=2, num_test=2, num_validation=3)
  assert [data_pipelines.num_examples(c, s)
          for s in ("train", "validation", "test")] == [6, 3, 2]
  test = u.batches(c, "test", batch_size=4)
  assert len(test) == 1 and u.ids_of(test) == kept[:2]
  np.testing.assert_array_equal(test[0]["valid"], [True, True, False, False])
  assert not test[0]["image"][2:].any()  # Padding rows are zeros.
  val = u.batches(c, "validation", batch_size=2)
  assert len(val) == 2 and u.ids_of(val) == kept[2:5]
  np.testing.assert_array_equal(val[1]["valid"], [True, False])
  # Train: each kept train record once per epoch, in a new order.
  train = u.batches(c, "train", batch_size=6, num=3)
  ids = u.ids_of(train)
  assert sorted(ids[:6]) == sorted(ids[6:12]) == sorted(ids[12:]) == kept[5:]
  assert len({tuple(ids[:6]), tuple(ids[6:12]), tuple(ids[12:])}) > 1
  for b in train:
    for row in range(6):
      i = int(round(b["image"][row, 0, 0, 0] * 255))
      np.testing.assert_allclose(b["image"][row], images[i] / 255.0,
                                 atol=1e-6)
      np.testing.assert_array_equal(b["segmentation"][row],
                                    _labels(masks[i], 4))
      assert len(set(np.unique(b["segmentation"][row])) - {0}) <= 2
  u.check_resume(c, "train", batch_size=3, start_step=4, repeat=True)
  u.check_resume(c, "validation", batch_size=2, start_step=1, repeat=False)
  u.check_sharding(c, "train", batch_size=4, steps=3, repeat=True)
  u.check_sharding(c, "validation", batch_size=2, steps=None, repeat=False)
  # A given kept count skips the counting pass: same stream; a wrong one
  # stops the stream with an error naming the file.
  given = _config(d, max_objects=2, num_test=2, num_validation=3,
                  num_records=11)
  for a, b in zip(train, u.batches(given, "train", batch_size=6, num=3)):
    np.testing.assert_array_equal(a["image"], b["image"])
  wrong = _config(d, max_objects=2, num_test=2, num_validation=3,
                  num_records=13)
  assert data_pipelines.num_examples(wrong, "train") == 8
  ds = data_pipelines.get_dataset(wrong, "train", batch_size=8, seed=0)
  with pytest.raises(stream.DatasetReadError,
                     match="(?s)objects_room_train.*at most 2 objects.*"
                     "expected to contain 8"):
    next(stream.iterate(ds))
  # Too few kept records for the evaluation splits.
  with pytest.raises(ValueError, match="has 3 records with at most 0 "):
    data_pipelines.num_examples(_config(d, max_objects=0, num_test=2,
                                        num_validation=3), "train")


def test_max_objects_without_effect_and_errors(filtered):
  d, _, _ = filtered
  # Keeping every scene reads the same stream as no filter.
  every = _config(d, max_objects=3, num_test=2, num_validation=3)
  none = _config(d, num_test=2, num_validation=3, num_records=16)
  assert data_pipelines.num_examples(every, "train") == 11  # 16 - 5.
  for split, repeat in (("train", True), ("test", False)):
    a = u.batches(every, split, batch_size=4, num=2, repeat=repeat)
    b = u.batches(none, split, batch_size=4, num=2, repeat=repeat)
    for x, y in zip(a, b):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
  with pytest.raises(ValueError, match="data.max_objects=-2"):
    data_pipelines.num_examples(_config(d, max_objects=-2), "test")


def test_max_objects_on_a_test_set(tmp_path):
  objects = [6, 2, 5, 0, 4]  # six_objects: 4 background entities of 10.
  u.write_multi_object(str(tmp_path), "objects_room", "six_objects", 5,
                       visible=[4 + k for k in objects])
  c = _config(tmp_path, variant="six_objects", max_objects=4)
  assert multi_object.num_examples(c, "test") == 3
  b = u.batches(c, "test", batch_size=4)[0]
  assert u.ids_of([b]) == [1, 3, 4]
