"""Tests of data_pipelines.generate and data_pipelines.video_strip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import data_pipelines
from data_pipelines import bouncing_balls as bb
from data_pipelines import generate
from data_pipelines import palette
from data_pipelines import stream
from data_pipelines import video_common as vc
from data_pipelines import video_strip

_SMALL = ["image_size=32", "episode_length=6", "num_frames=6", "substeps=2"]


def _stream(config, split, n=2, batch_size=3):
  ds = data_pipelines.get_dataset(config, split, batch_size=batch_size,
                                  seed=4, process_index=0, process_count=1)
  return list(ds.take(n).as_numpy_iterator())


def test_generate_matches_on_the_fly(tmp_path):
  out = str(tmp_path / "bb")
  info = generate.generate(
      "bouncing_balls", out, overrides=_SMALL, seed=7,
      episodes={"train": 5, "validation": 2, "test": 3}, workers=2,
      shard_size=2, progress=False)
  assert info["splits"]["train"] == {
      "num_examples": 5, "shards": [vc.shard_name("train", i, 3)
                                    for i in range(3)]}
  assert info["episode_shape"] == [6, 32, 32, 3]
  assert sorted(os.listdir(out)) == sorted(
      [vc.INFO_FILE] + [s for v in info["splits"].values()
                        for s in v["shards"]])
  on_disk = bb.default_config()
  on_disk.data_dir = out
  stream.apply_overrides(on_disk, _SMALL + ["content_seed=7"])
  fly = bb.default_config()
  stream.apply_overrides(fly, _SMALL + ["content_seed=7", "num_train=5",
                                        "num_validation=2", "num_test=3"])
  assert data_pipelines.num_examples(on_disk, "train") == 5
  for split in ("train", "test"):
    for a, b in zip(_stream(on_disk, split), _stream(fly, split)):
      assert set(a) == set(b)
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_generate_resumes_and_refuses_other_settings(tmp_path):
  out = str(tmp_path / "bb")
  kw = dict(overrides=_SMALL, episodes={"train": 3}, splits=("train",),
            workers=1, shard_size=2, progress=False)
  generate.generate("bouncing_balls", out, **kw)
  shard = os.path.join(out, vc.shard_name("train", 0, 2))
  before = os.stat(shard).st_mtime_ns
  os.remove(os.path.join(out, vc.shard_name("train", 1, 2)))
  generate.generate("bouncing_balls", out, **kw)  # Redo the missing shard.
  assert os.stat(shard).st_mtime_ns == before
  assert data_pipelines.num_examples(
      stream.apply_overrides(bb.default_config(), [f"data_dir={out!r}"]),
      "train") == 3
  with pytest.raises(FileExistsError, match="--overwrite"):
    generate.generate("bouncing_balls", out, **dict(kw, seed=1))
  generate.generate("bouncing_balls", out, overwrite=True, **dict(kw, seed=1))
  with open(os.path.join(out, vc.INFO_FILE)) as f:
    assert json.load(f)["generation"]["content_seed"] == 1


def test_reading_errors(tmp_path):
  c = bb.default_config()
  c.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="data_pipelines.generate"):
    data_pipelines.num_examples(c, "train")
  out = str(tmp_path / "bb")
  generate.generate("bouncing_balls", out, overrides=_SMALL,
                    episodes={"train": 2}, splits=("train",), workers=1,
                    progress=False)
  c.data_dir = out
  with pytest.raises(ValueError, match="split 'test' was not generated"):
    data_pipelines.num_examples(c, "test")
  c.num_frames = 7
  with pytest.raises(ValueError, match="num_frames=7 exceeds"):
    _stream(c, "train")
  # A corrupt record names its file.
  shard = os.path.join(out, vc.shard_name("train", 0, 1))
  data = bytearray(open(shard, "rb").read())
  data[40:60] = b"\x00" * 20
  open(shard, "wb").write(bytes(data))
  vc.sharded_episodes.cache_clear()
  c.num_frames = 6
  with pytest.raises(Exception, match="train-00000-of-00001.tfrecord"):
    _stream(c, "train")


def test_clevrer_like_generation(tmp_path):
  out = str(tmp_path / "cl")
  assert generate.main([
      "clevrer_like", f"--out={out}", "--episodes=2", "--splits=validation",
      "--workers=1", "--set", "image_size=16", "--set", "episode_length=3",
      "--set", "supersampling=1", "--no_progress"]) == 0
  from data_pipelines import clevrer_like  # pylint: disable=g-import-not-at-top
  c = clevrer_like.default_config()
  c.update(dict(data_dir=out, num_frames=3))
  (b,) = _stream(c, "validation", batch_size=2)
  assert b["video"].shape == (2, 3, 16, 16, 3)


def test_parse_episodes_and_unknown_name():
  assert generate.parse_episodes("5", ["train", "test"]) == {
      "train": 5, "test": 5}
  assert generate.parse_episodes("train=4,test=1", ["train"]) == {
      "train": 4, "test": 1}
  with pytest.raises(ValueError, match="Unknown procedural"):
    generate.build_config("sprites")


def test_video_strip(tmp_path):
  rng = np.random.default_rng(0)
  batch = {"video": rng.uniform(size=(3, 5, 8, 8, 3)).astype(np.float32),
           "segmentation": rng.integers(0, 4, (3, 5, 8, 8))}
  path = video_strip.render_video_strip(
      batch, str(tmp_path / "s.png"), max_videos=2, max_frames=4, scale=1,
      extra_rows={"pred": batch["segmentation"][::-1]})
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.asarray(Image.open(path))
  # 2 videos x (frames, gt ids, predicted ids) rows, 4 frames, 2-px gaps.
  assert img.shape == (6 * 8 + 5 * 2, 4 * 8 + 3 * 2, 3)
  pal = palette.palette()
  np.testing.assert_array_equal(img[8 + 2:16 + 2, :8],
                                pal[batch["segmentation"][0, 0]])
  with pytest.raises(ValueError, match="video"):
    video_strip.strip_image({"video": np.zeros((2, 8, 8, 3))})
  # Padding rows of evaluation batches are not drawn.
  padded = dict(batch, valid=np.array([False, True, False]))
  img = video_strip.strip_image(padded, max_frames=4, extra_rows=None)
  assert img.shape[0] == 2 * 8 + 2
  np.testing.assert_array_equal(img[10:18, :8],
                                pal[batch["segmentation"][1, 0]])


def test_video_strip_cli(tmp_path, capsys):
  out = str(tmp_path / "strip.png")
  assert video_strip.main([
      "--dataset=bouncing_balls", f"--out={out}", "--num_videos=2",
      "--num_frames=3", "--set", "image_size=32", "--set",
      "episode_length=4", "--set", "num_frames=4", "--split=validation",
      "--preset=colour4"]) == 0
  assert os.path.exists(out)
  assert "video (2, 4, 32, 32, 3)" in capsys.readouterr().out
