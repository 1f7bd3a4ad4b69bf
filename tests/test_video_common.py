"""Tests of data_pipelines.video_common: streams, TFRecords, overrides."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import data_pipelines
from data_pipelines import bouncing_balls
from data_pipelines import video_common as vc

VIDEO_DATASETS = ("bouncing_balls", "clevrer_like", "p2d",
                  "bouncing_balls_rnem", "clevrer", "sketchy_video")


def _rows(step, n, g, p=0, pc=1, repeat=True, seed=0):
  return vc.step_rows(step, n, split=0, batch_size=g, seed=seed,
                      process_index=p, process_count=pc, repeat=repeat)


def test_registry_has_video_datasets():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in VIDEO_DATASETS:
    assert name in data_pipelines.DATASETS
    module = importlib.import_module(data_pipelines.DATASETS[name])
    config = module.default_config()
    assert config.name == name
    for field in ("data_dir", "num_frames", "num_parallel_calls",
                  "prefetch"):
      assert field in config, (name, field)
    assert callable(module.get_dataset) and callable(module.num_examples)


def test_epochs_are_permutations_and_streams_resume():
  n, g = 10, 4
  seen = np.concatenate([_rows(s, n, g)[0] for s in range(5)])  # 20 rows.
  assert sorted(seen[:10]) == list(range(10))
  assert sorted(seen[10:]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:])  # New order per epoch.
  np.testing.assert_array_equal(_rows(3, n, g)[0], seen[12:16])
  # Another shuffle seed, another order.
  other = np.concatenate([_rows(s, n, g, seed=1)[0] for s in range(3)])
  assert not np.array_equal(other[:10], seen[:10])


def test_processes_split_the_global_batch():
  n, g = 13, 6
  for step in range(4):
    whole = _rows(step, n, g)[0]
    parts = np.concatenate([_rows(step, n, g, p, 3)[0] for p in range(3)])
    np.testing.assert_array_equal(parts, whole)


def test_finite_stream_pads_the_last_batch():
  idx, valid = _rows(2, 10, 4, repeat=False)
  np.testing.assert_array_equal(idx, [8, 9, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False, False])


def test_make_dataset_shapes_valid_and_resume():
  feats = {"x": vc.Feature((2,), np.float32)}

  def load(indices, valid):
    return {"x": np.stack([indices, indices * valid], -1).astype(np.float32)}

  def run(**kw):
    ds = vc.make_dataset(load, feats, n=5, split="validation", batch_size=2,
                         seed=0, process_index=0, process_count=1, **kw)
    return list(ds.as_numpy_iterator())

  out = run(start_step=0, repeat=False)
  assert len(out) == 3
  np.testing.assert_array_equal(out[-1]["valid"], [True, False])
  np.testing.assert_array_equal(out[-1]["x"][:, 0], [4, 0])
  resumed = run(start_step=1, repeat=False)
  np.testing.assert_array_equal(resumed[0]["x"], out[1]["x"])
  train = vc.make_dataset(load, feats, n=5, split="train", batch_size=2,
                          seed=0, start_step=7, process_index=0,
                          process_count=1, repeat=True)
  first = next(iter(train.as_numpy_iterator()))
  assert "valid" not in first
  np.testing.assert_array_equal(first["x"][:, 0], _rows(7, 5, 2)[0])


def test_make_dataset_rejects_bad_arguments():
  feats = {"x": vc.Feature((1,), np.float32)}
  load = lambda i, v: {"x": np.zeros((len(i), 1), np.float32)}
  with pytest.raises(ValueError, match="batch_size"):
    vc.make_dataset(load, feats, n=5, split="train", batch_size=3, seed=0,
                    start_step=0, process_index=0, process_count=2,
                    repeat=True)
  with pytest.raises(ValueError, match="split"):
    vc.make_dataset(load, feats, n=5, split="dev", batch_size=2, seed=0,
                    start_step=0, process_index=0, process_count=1,
                    repeat=True)


def test_tfrecord_random_access_matches_tf(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "a.tfrecord")
  records = [bytes([i % 251]) * (i * 37 + 1) for i in range(20)]
  assert vc.write_tfrecord(path, records) == 20
  f = vc.RecordFile(path)
  assert len(f) == 20
  for i in (0, 7, 19, 3):
    assert f.read(i) == records[i]
  # The files are standard TFRecords.
  read = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert read == records


def test_truncated_tfrecord_is_named(tmp_path):
  path = str(tmp_path / "a.tfrecord")
  vc.write_tfrecord(path, [b"x" * 100, b"y" * 100])
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(ValueError, match="a.tfrecord.*truncated"):
    vc.RecordFile(path)


def test_episode_encoding_round_trip():
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
  seg = rng.integers(0, 4, (3, 5, 4)).astype(np.uint8)
  enc = vc.encode_episode(video, seg, index=7, num_objects=3)
  ep = vc.parse_episode(vc.serialize_episode(enc), "here")
  np.testing.assert_array_equal(ep["video"], video)
  np.testing.assert_array_equal(ep["segmentation"], seg)
  assert ep["index"] == 7 and ep["num_objects"] == 3
  with pytest.raises(ValueError, match="here"):
    vc.parse_episode(b"garbage", "here")


def test_apply_overrides():
  c = bouncing_balls.default_config()
  vc.apply_overrides(c, ["image_size=32", "num_balls=(6, 8)",
                         "variant=colour", "radius=3", "data.substeps=4"])
  assert (c.image_size, c.num_balls, c.variant, c.radius, c.substeps) == (
      32, (6, 8), "colour", 3.0, 4)
  with pytest.raises(ValueError, match="no field 'nope'"):
    vc.apply_overrides(c, ["nope=1"])
  with pytest.raises(ValueError, match="int"):
    vc.apply_overrides(c, ["image_size=big"])
  with pytest.raises(ValueError, match="malformed"):
    vc.apply_overrides(c, ["image_size"])


def test_load_info_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    vc.load_info(str(tmp_path / "missing"), "bouncing_balls")
  with pytest.raises(FileNotFoundError, match="dataset_info.json"):
    vc.load_info(str(tmp_path), "bouncing_balls")
  (tmp_path / vc.INFO_FILE).write_text(json.dumps(
      {"name": "p2d", "format_version": vc.FORMAT_VERSION}))
  with pytest.raises(ValueError, match="holds dataset 'p2d'"):
    vc.load_info(str(tmp_path), "bouncing_balls")
