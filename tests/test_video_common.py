"""Tests of data_pipelines.video_common: registry, episodes, info files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import data_pipelines
from data_pipelines import video_common as vc

VIDEO_DATASETS = ("bouncing_balls", "clevrer_like", "p2d",
                  "bouncing_balls_rnem", "clevrer", "sketchy_video")


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


def test_load_info_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    vc.load_info(str(tmp_path / "missing"), "bouncing_balls")
  with pytest.raises(FileNotFoundError, match="dataset_info.json"):
    vc.load_info(str(tmp_path), "bouncing_balls")
  (tmp_path / vc.INFO_FILE).write_text(json.dumps(
      {"name": "p2d", "format_version": vc.FORMAT_VERSION}))
  with pytest.raises(ValueError, match="holds dataset 'p2d'"):
    vc.load_info(str(tmp_path), "bouncing_balls")


def test_cached_episodes_are_generated_once_per_process():
  """``cache_episodes``: every dataset built on the same spec (a run's
  evaluations, its figure batches) reuses the episodes; another spec or
  split generates its own."""
  calls = []

  def generate(split, index):
    calls.append((split, index))
    return {"video": np.full((2, 4, 4, 3), index, np.uint8),
            "segmentation": np.zeros((2, 4, 4), np.int32)}

  config = {"data_dir": "", "num_test": 3, "num_train": 2,
            "cache_episodes": True}

  def source(split, spec):
    return vc.episodes_source(config, split, name="fake_cached",
                              generate=generate, episode_shape=(2, 4, 4),
                              generation_fields=(), cache_key=spec)

  for _ in range(2):
    n, _, episode = source("test", ("spec", 1))
    assert n == 3
    assert [int(episode(i)[0][0, 0, 0, 0]) for i in range(n)] == [0, 1, 2]
  assert calls == [("test", 0), ("test", 1), ("test", 2)]
  source("test", ("spec", 2))[2](0)
  source("train", ("spec", 1))[2](0)
  assert calls[3:] == [("test", 0), ("train", 0)]
