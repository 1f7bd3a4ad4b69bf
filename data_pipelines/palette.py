"""The one palette of label colours (ground truth, slots, track ids).

Label 0 (background) is black; labels 1, 2, ... take `COLOURS` in order and
cycle after the last, so an object keeps its colour in every figure, strip
and grid, whatever draws it. `data_pipelines.inspect` and
`data_pipelines.video_strip` draw with it, and so do the model figures
(``ocjax.viz``), which import it from here: data knows nothing about models.
"""

from __future__ import annotations

import numpy as np

# 20 well-separated colours (Kelly / Tableau-like), for labels 1, 2, ...
COLOURS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
    [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195],
    [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], np.uint8)
COLOURS.flags.writeable = False


def palette(n: int = 256) -> np.ndarray:
  """``[n, 3]`` uint8: the colours of labels ``0 .. n-1`` (black first)."""
  return labels_to_rgb(np.arange(n))


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
  """Integer labels ``[...]`` -> uint8 colours ``[..., 3]``.

  Labels <= 0 are black; label ``i >= 1`` is ``COLOURS[(i - 1) % 20]``.
  """
  labels = np.asarray(labels).astype(np.int64)
  rgb = COLOURS[np.mod(labels - 1, len(COLOURS))]
  return np.where((labels > 0)[..., None], rgb, np.uint8(0))


# Label 0 and the 20 colours, as a table indexed by label.
PALETTE = palette(len(COLOURS) + 1)
PALETTE.flags.writeable = False
