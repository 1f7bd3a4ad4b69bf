"""Procedural Bouncing Balls with masses (as R-NEM's; paper 004, Sec. 4.1).

"Each video shows simulated balls with different masses bouncing elastically
off each other and the image border" (Zablotskaia et al., Sec. 4.1), as in
R-NEM's ``balls4mass64`` / ``balls678mass64`` (van Steenkiste et al. 2018),
whose balls have "different masses corresponding to their radii". Here:

* ``image_size`` x ``image_size`` frames (64 in the papers), black
  background; ``episode_length`` frames simulated (R-NEM stores 51, paper 004
  uses 50 and trains on the first 40: ``num_frames``).
* Each ball draws a mass from ``mass_choices``; its radius is
  ``radius * mass**(1/3)`` (constant density). Positions start without
  overlap, speeds are uniform in ``speed`` (pixels per frame), directions
  uniform. ``substeps`` Euler sub-steps per frame; ball-ball collisions are
  elastic (momentum and kinetic energy conserved, impulse along the line of
  centres), wall collisions reflect the normal velocity.
* Train and validation videos hold ``num_balls`` balls (4), the test split
  ``test_num_balls`` (4, or 6-8 for the generalisation test: preset
  ``balls678``).
* ``variant="binary"``: white balls on black (replicated to RGB).
  ``variant="colour"`` colours each ball from the first ``num_colours``
  entries of `PALETTE` (appendix B of paper 004: 4 colours for the 4-ball
  data; for 6-8 balls, 4 colours, so colours repeat, or 8 colours, 4 of them
  new, so every ball has its own). Balls get distinct colours while there
  are enough, then colours repeat.
* ``segmentation``: ball ``i`` is track id ``i + 1`` in every frame; where
  balls overlap (briefly, during a collision) the higher id is drawn on top.

Determinism: an episode is a pure function of ``(content_seed, split,
index)`` and the scene fields; ``get_dataset``'s ``seed`` only shuffles, so
the on-the-fly stream and a directory written by ``data_pipelines.generate``
with the same ``--seed`` hold the same videos.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "bouncing_balls"
_DATASET_TAG = 1  # Seeds of this dataset's content streams.
_REFERENCE_SIZE = 64  # Pixel-valued fields are given for 64x64 frames.

# ColorBrewer Set1: the first 4 are the training colours, the next 4 the new
# colours of the 8-colour test variant.
PALETTE = np.array([
    [228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163],
    [255, 127, 0], [255, 255, 51], [166, 86, 40], [247, 129, 191],
], np.uint8)
VARIANTS = ("binary", "colour")

# Presets of paper 004 (Sec. 4.1, App. B), as field overrides.
PRESETS = {
    "binary4": dict(variant="binary", test_num_balls=(4, 4)),
    "binary678": dict(variant="binary", test_num_balls=(6, 8)),
    "colour4": dict(variant="colour", num_colours=4, test_num_balls=(4, 4)),
    "colour678_4colours": dict(variant="colour", num_colours=4,
                               test_num_balls=(6, 8)),
    "colour678_8colours": dict(variant="colour", num_colours=8,
                               test_num_balls=(6, 8)),
}
GENERATION_FIELDS = ("image_size", "episode_length", "num_balls",
                     "test_num_balls", "variant", "num_colours", "radius",
                     "mass_choices", "speed", "substeps", "content_seed")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  # Directory written by `python -m data_pipelines.generate bouncing_balls`;
  # empty: generate on the fly.
  c.data_dir = ""
  c.image_size = 64  # Height = width, pixels.
  c.episode_length = 50  # Frames simulated per video (paper 004: 50).
  c.num_frames = 40  # Frames per example: the first num_frames (paper: 40).
  c.num_balls = (4, 4)  # Balls in train/validation videos, [min, max].
  c.test_num_balls = (4, 4)  # Test videos; (6, 8) for generalisation.
  c.variant = "binary"  # "binary" or "colour".
  c.num_colours = 4  # Colour variant: colours used, first of PALETTE (4/8).
  c.radius = 4.0  # Radius of a unit-mass ball, pixels at 64x64.
  c.mass_choices = (1.0, 2.0, 4.0)  # Masses drawn uniformly per ball.
  c.speed = (1.0, 3.0)  # Initial speed range, pixels per frame at 64x64.
  c.substeps = 8  # Integration sub-steps per frame.
  c.num_train = 50_000  # Paper 004: 50K training videos.
  c.num_validation = 10_000
  c.num_test = 10_000  # Paper 004: 10K test videos.
  c.content_seed = 0  # Seed of the videos' content (generate --seed).
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Validated scene fields (picklable, for generator workers)."""
  image_size: int
  episode_length: int
  num_balls: tuple[int, int]
  test_num_balls: tuple[int, int]
  variant: str
  num_colours: int
  radius: float  # Pixels at image_size.
  mass_choices: tuple[float, ...]
  speed: tuple[float, float]  # Pixels per frame at image_size.
  substeps: int
  content_seed: int


def spec_from_config(config: Any) -> Spec:
  """Validates the scene fields; raises ValueError naming a field."""
  size = stream.int_field(config, "image_size", 16)
  scale = size / _REFERENCE_SIZE
  variant = stream.check_choice(stream.field(config, "variant"), "variant",
                                VARIANTS)
  num_colours = stream.int_field(config, "num_colours")
  if num_colours > len(PALETTE):
    raise ValueError(f"data.num_colours={num_colours} is invalid; expected "
                     f"<= {len(PALETTE)}.")
  masses = tuple(float(m) for m in stream.field(config, "mass_choices"))
  if not masses or min(masses) <= 0:
    raise ValueError(f"data.mass_choices={masses} is invalid; expected "
                     "positive masses.")
  radius = float(stream.field(config, "radius")) * scale
  lo, hi = (s * scale for s in stream.float_range(config, "speed", 0.0))
  spec = Spec(
      image_size=size,
      episode_length=stream.int_field(config, "episode_length"),
      num_balls=stream.int_range(config, "num_balls", minimum=1),
      test_num_balls=stream.int_range(config, "test_num_balls", minimum=1),
      variant=variant, num_colours=num_colours, radius=radius,
      mass_choices=masses, speed=(lo, hi),
      substeps=stream.int_field(config, "substeps"),
      content_seed=int(stream.field(config, "content_seed")))
  r_max = radius * max(masses) ** (1 / 3)
  n_max = max(spec.num_balls[1], spec.test_num_balls[1])
  if r_max <= 0 or n_max * np.pi * r_max**2 > 0.5 * size * size:
    raise ValueError(
        f"data.radius={config.radius} with data.mass_choices={masses}: "
        f"{n_max} balls of radius up to {r_max:.1f} px do not fit in "
        f"{size}x{size} frames.")
  return spec


def num_examples(config: Any, split: str) -> int:
  return source(config, split)[0]


# ---------------------------------------------------------------- simulation


def simulate(rng: np.random.Generator, n: int, spec: Spec):
  """Rolls out ``n`` balls.

  Returns:
    positions [T, n, 2] (y, x in pixels), velocities [T, n, 2] (pixels per
    frame), radii [n], masses [n].
  """
  size = float(spec.image_size)
  masses = rng.choice(np.asarray(spec.mass_choices), size=n)
  radii = spec.radius * masses ** (1 / 3)
  pos = np.zeros((n, 2))
  for i in range(n):  # Rejection sampling of non-overlapping starts.
    for _ in range(1000):
      p = rng.uniform(radii[i], size - radii[i], 2)
      if i == 0 or np.all(np.linalg.norm(pos[:i] - p, axis=1)
                          > radii[:i] + radii[i] + 1.0):
        pos[i] = p
        break
    else:
      raise RuntimeError(f"Could not place {n} balls without overlap; lower "
                         "data.radius or the number of balls.")
  angle = rng.uniform(0, 2 * np.pi, n)
  speed = rng.uniform(spec.speed[0], spec.speed[1], n)
  vel = np.stack([np.sin(angle), np.cos(angle)], -1) * speed[:, None]
  t_len, dt = spec.episode_length, 1.0 / spec.substeps
  positions = np.zeros((t_len, n, 2))
  velocities = np.zeros((t_len, n, 2))
  iu, ju = np.triu_indices(n, 1)
  for t in range(t_len):
    positions[t], velocities[t] = pos, vel
    for _ in range(spec.substeps):
      pos = pos + vel * dt
      # Walls: reflect the normal velocity of balls moving out of the box.
      low, high = pos < radii[:, None], pos > size - radii[:, None]
      pos = np.where(low, 2 * radii[:, None] - pos, pos)
      pos = np.where(high, 2 * (size - radii[:, None]) - pos, pos)
      vel = np.where((low & (vel < 0)) | (high & (vel > 0)), -vel, vel)
      # Ball-ball: elastic impulse along the line of centres.
      diff = pos[iu] - pos[ju]  # [P, 2]
      dist = np.linalg.norm(diff, axis=1)
      for k in np.nonzero(dist < radii[iu] + radii[ju])[0]:
        i, j = iu[k], ju[k]
        d = pos[i] - pos[j]
        norm = max(float(np.linalg.norm(d)), 1e-9)
        nrm = d / norm
        approach = float(np.dot(vel[i] - vel[j], nrm))
        mi, mj = masses[i], masses[j]
        if approach < 0:
          vel[i] = vel[i] - 2 * mj / (mi + mj) * approach * nrm
          vel[j] = vel[j] + 2 * mi / (mi + mj) * approach * nrm
        # Separate the overlap, heavier balls moving less.
        overlap = radii[i] + radii[j] - norm
        pos[i] = pos[i] + overlap * mj / (mi + mj) * nrm
        pos[j] = pos[j] - overlap * mi / (mi + mj) * nrm
      pos = np.clip(pos, radii[:, None], size - radii[:, None])
  return positions, velocities, radii, masses


def render_segmentation(positions: np.ndarray, radii: np.ndarray,
                        size: int) -> np.ndarray:
  """Track ids [T, S, S] uint8 of discs (ball i -> id i + 1, later on top)."""
  c = np.arange(size) + 0.5
  dy = c[None, None, :, None] - positions[:, :, 0, None, None]  # [T,n,S,1]
  dx = c[None, None, None, :] - positions[:, :, 1, None, None]  # [T,n,1,S]
  inside = dy * dy + dx * dx <= (radii ** 2)[None, :, None, None]  # [T,n,S,S]
  ids = np.arange(1, len(radii) + 1, dtype=np.uint8)[None, :, None, None]
  return np.max(np.where(inside, ids, 0), axis=1).astype(np.uint8)


def ball_colours(rng: np.random.Generator, n: int,
                 num_colours: int) -> np.ndarray:
  """[n, 3] uint8: distinct colours while the palette lasts, then repeats."""
  order = rng.permutation(num_colours)
  extra = rng.integers(0, num_colours, max(0, n - num_colours))
  return PALETTE[np.concatenate([order, extra])[:n]]


def colourise(segmentation: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """Video [..., 3] uint8 painting track id i with colours[i - 1]."""
  lut = np.concatenate([np.zeros((1, 3), np.uint8), colours], 0)
  return lut[segmentation]


def generate_episode(spec: Spec, split: str, index: int) -> dict[str, Any]:
  """One video: ``video`` uint8 [T, S, S, 3], ``segmentation`` uint8."""
  rng = np.random.default_rng([
      vc.CONTENT_STREAM, _DATASET_TAG, stream.seed_word(spec.content_seed),
      stream.split_id(split), int(index)])
  lo, hi = spec.test_num_balls if split == "test" else spec.num_balls
  n = int(rng.integers(lo, hi + 1))
  positions, _, radii, _ = simulate(rng, n, spec)
  seg = render_segmentation(positions, radii, spec.image_size)
  if spec.variant == "binary":
    video = np.repeat((seg > 0)[..., None] * np.uint8(255), 3, axis=-1)
  else:
    video = colourise(seg, ball_colours(rng, n, spec.num_colours))
  return {"video": video.astype(np.uint8), "segmentation": seg,
          "num_objects": n}


# ------------------------------------------------------------------ tf.data


def source(config: Any, split: str):
  spec = spec_from_config(config)
  return vc.episodes_source(
      config, split, name=NAME,
      generate=lambda s, i: generate_episode(spec, s, i),
      episode_shape=(spec.episode_length, spec.image_size, spec.image_size),
      generation_fields=GENERATION_FIELDS, cache_key=spec)


def get_dataset(config: Any, split: str, *, batch_size: int, seed: int,
                start_step: int = 0, process_index: int | None = None,
                process_count: int | None = None,
                repeat: bool | None = None):
  """This process's batches (see ``data_pipelines/__init__.py``).

  Elements: ``video`` float32 [b, T, S, S, 3] in [0, 1], ``segmentation``
  int32 [b, T, S, S] (track ids, 0 = background) and, when not repeating,
  ``valid`` bool [b]; ``T = num_frames``, ``b = batch_size //
  process_count``.
  """
  return vc.episodes_dataset(
      config, split, source(config, split), batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat)
