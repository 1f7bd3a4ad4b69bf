"""Tests of the P2D-like Panda pushing generator (needs pybullet)."""

from __future__ import annotations

import numpy as np
import pytest

import data_pipelines
from data_pipelines import p2d

import pybullet  # requirements.txt installs the [sim] extra.


def _small(**kw):
  c = p2d.default_config()
  c.update(dict(image_size=32, episode_length=4, num_frames=3,
                sim_steps_per_frame=20, settle_steps=10, num_objects=(2, 2),
                line_length=(0.06, 0.1),
                shadows=False, num_train=3, num_validation=1, num_test=1))
  c.update(kw)
  return c


def test_episode_contents():
  spec = p2d.spec_from_config(_small())
  ep = p2d.generate_episode(spec, "train", 0, return_state=True)
  video, seg = ep["video"], ep["segmentation"]
  assert video.shape == (4, 32, 32, 3) and video.dtype == np.uint8
  assert seg.shape == (4, 32, 32)
  assert ep["num_objects"] == 3  # Two objects and the arm.
  assert set(np.unique(seg)) <= {0, 1, 2, 3}
  assert all((s == p2d.ARM_ID).any() for s in seg)  # The arm is in view.
  assert len(ep["kinds"]) == 2 and set(ep["kinds"]) <= set(p2d.OBJECTS)
  # The gripper tip follows the horizontal push line (IK is sane).
  start, end = ep["line"]
  ee = ep["ee_positions"]
  np.testing.assert_allclose(ee[:, 2], p2d.TABLE_TOP + spec.push_height,
                             atol=0.01)
  u = (np.arange(4) / 3)[:, None]
  np.testing.assert_allclose(ee[:, :2], (1 - u) * start + u * end,
                             atol=0.03)
  again = p2d.generate_episode(spec, "train", 0)
  np.testing.assert_array_equal(again["video"], video)
  np.testing.assert_array_equal(again["segmentation"], seg)


def test_get_dataset_on_the_fly():
  c = _small()
  ds = data_pipelines.get_dataset(c, "test", batch_size=2, seed=0,
                                  process_index=0, process_count=1)
  (b,) = list(ds.as_numpy_iterator())
  assert b["video"].shape == (2, 3, 32, 32, 3)
  assert b["segmentation"].dtype == np.int32
  np.testing.assert_array_equal(b["valid"], [True, False])


def test_validation_and_missing_pybullet(monkeypatch):
  with pytest.raises(ValueError, match="data.objects"):
    p2d.spec_from_config(_small(objects=("mug", "piano")))
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def no_pybullet(name, *args, **kwargs):
    if name.startswith("pybullet"):
      raise ImportError("no pybullet")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_pybullet)
  assert data_pipelines.num_examples(_small(), "train") == 3
  with pytest.raises(ImportError, match=r"pip install \.\[sim\]"):
    data_pipelines.get_dataset(_small(), "train", batch_size=1, seed=0,
                               process_index=0, process_count=1)


def test_connections_keep_pybullets_banner_off_stdout(capfd):
  import threading
  clients = []
  threads = [threading.Thread(target=lambda: clients.append(p2d.connect()))
             for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for c in clients:
    c.disconnect()
  print("stdout still works")
  out = capfd.readouterr().out
  assert "argv[0]" not in out and "stdout still works" in out
  assert len(clients) == 4
