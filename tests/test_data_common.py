"""Resampling of the real image datasets (data_pipelines/image_common)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_pipelines import image_common as ic


@pytest.mark.parametrize("n_in,n_out", [(640, 170), (480, 128), (192, 128),
                                        (196, 64), (35, 32), (100, 300)])
def test_pil_nearest_is_exact(n_in, n_out):
  a = np.tile(np.arange(n_in, dtype=np.int32)[None], (2, 1))
  want = np.asarray(Image.fromarray(a).resize((n_out, 2), Image.NEAREST))[0]
  np.testing.assert_array_equal(ic.pil_nearest_indices(n_in, n_out), want)


def test_torch_nearest():
  np.testing.assert_array_equal(ic.torch_nearest_indices(192, 128),
                                np.floor(np.arange(128) * 1.5))
  np.testing.assert_array_equal(ic.torch_nearest_indices(196, 64),
                                np.floor(np.arange(64) * 3.0625))
  np.testing.assert_array_equal(ic.torch_nearest_indices(64, 64),
                                np.arange(64))


def test_bilinear_matches_pil():
  yy, xx = np.mgrid[:196, :196]
  img = np.stack([np.sin(xx / 7.0) * 120 + 128, np.cos(yy / 5.0) * 120 + 128,
                  (xx * yy) % 256], -1).astype(np.uint8)
  got = ic.resize_bilinear_uint8(img, (64, 64)).numpy()
  want = np.asarray(Image.fromarray(img).resize((64, 64), Image.BILINEAR))
  assert np.abs(got - want).max() <= 1.0
  assert np.mean(got != want) < 0.05
