"""Procedural CLEVRER-like videos: CLEVR objects sliding and colliding.

A small stand-in for CLEVRER (Yi et al. 2020; paper 004, Sec. 4.1) that needs
no download: ``num_objects`` CLEVR-style objects (sphere, cube, cylinder;
rubber or metal; the 8 CLEVR colours; no two objects share all three
attributes) on a grey floor, seen by a fixed perspective camera and rendered
by a NumPy ray caster at ``image_size`` x ``image_size`` (64 as paper 004's
pre-processed CLEVRER) with ``supersampling``^2 rays per pixel.

Dynamics, as in CLEVRER's videos: objects start at rest or sliding; some
(``enter_probability``) start outside the view and slide in; they slow down
by Coulomb friction, collide with each other (restitution ``restitution``,
masses from volume and material) and may leave the view. Shading: Lambert
for rubber, Lambert + Blinn-Phong highlight + a tinted environment
reflection for metal, with cast shadows from one directional light.

``segmentation``: object ``i`` is track id ``i + 1`` in every frame (0 =
floor); an object out of view or hidden behind another has an empty mask
in that frame. A pixel's label is the majority over its rays.

Determinism: an episode is a pure function of ``(content_seed, split,
index)`` and the scene fields; ``get_dataset``'s ``seed`` only shuffles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "clevrer_like"
_DATASET_TAG = 3

SHAPES = ("sphere", "cube", "cylinder")
MATERIALS = ("rubber", "metal")
# CLEVR's colours (RGB 0-255), as in its rendering properties.
COLOURS = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215),
    "green": (29, 105, 20), "brown": (129, 74, 25),
    "purple": (129, 38, 192), "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
_COLOUR_NAMES = tuple(COLOURS)
_FLOOR = np.array([0.52, 0.52, 0.50])
_SKY = np.array([0.80, 0.80, 0.82])
_AMBIENT = 0.35
_EPS = 1e-4
GENERATION_FIELDS = (
    "image_size", "episode_length", "num_objects", "object_size",
    "enter_probability", "moving_probability", "speed", "friction",
    "restitution", "frame_dt", "substeps", "supersampling",
    "camera_distance", "camera_elevation", "camera_azimuth", "field_of_view",
    "content_seed")


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  # Directory written by `python -m data_pipelines.generate clevrer_like`;
  # empty: generate on the fly.
  c.data_dir = ""
  c.image_size = 64  # Height = width, pixels (paper 004: 64x64).
  c.episode_length = 40  # Frames per video (paper 004 trains on <= 40).
  c.num_frames = 40  # Frames per example: the first num_frames.
  c.num_objects = (3, 6)  # Objects per video, [min, max] (CLEVRER: <= 6).
  c.object_size = 0.45  # Sphere/cylinder radius, cube half-side (units).
  c.enter_probability = 0.25  # An object starts outside and slides in.
  c.moving_probability = 0.6  # An object in view starts sliding.
  c.speed = (1.0, 3.0)  # Initial speed range, units per second.
  c.friction = 0.35  # Coulomb deceleration, units per second^2.
  c.restitution = 0.9  # Of object-object collisions.
  c.frame_dt = 0.08  # Seconds per frame (CLEVRER 25 fps, stride 2).
  c.substeps = 8  # Physics sub-steps per frame.
  c.supersampling = 2  # Rays per pixel along each axis.
  c.camera_distance = 9.0  # From the look-at point (0, 0, 0), units.
  c.camera_elevation = 40.0  # Degrees above the floor.
  c.camera_azimuth = -40.0  # Degrees around the vertical.
  c.field_of_view = 38.0  # Degrees, vertical = horizontal.
  c.num_train = 10_000  # CLEVRER: 10K training videos.
  c.num_validation = 1_000
  c.num_test = 1_000
  c.content_seed = 0  # Seed of the videos' content (generate --seed).
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


PRESETS = {
    "3to5": dict(num_objects=(3, 5)),  # Paper 004's test with 3-5 objects.
    "6": dict(num_objects=(6, 6)),  # Paper 004's test with 6 objects.
}


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Validated scene fields (picklable, for generator workers)."""
  image_size: int
  episode_length: int
  num_objects: tuple[int, int]
  object_size: float
  enter_probability: float
  moving_probability: float
  speed: tuple[float, float]
  friction: float
  restitution: float
  frame_dt: float
  substeps: int
  supersampling: int
  camera_distance: float
  camera_elevation: float
  camera_azimuth: float
  field_of_view: float
  content_seed: int


def spec_from_config(config: Any) -> Spec:
  """Validates the scene fields; raises ValueError naming a field."""
  n = stream.int_range(config, "num_objects", minimum=1)
  if n[1] > len(SHAPES) * len(MATERIALS) * len(COLOURS):
    raise ValueError(f"data.num_objects={n} exceeds the number of distinct "
                     "objects.")
  speed = stream.float_range(config, "speed", 0.0)
  return Spec(
      image_size=stream.int_field(config, "image_size", 8),
      episode_length=stream.int_field(config, "episode_length"),
      num_objects=n,
      object_size=stream.float_field(config, "object_size", 0.05, 2.0),
      enter_probability=stream.float_field(config, "enter_probability"),
      moving_probability=stream.float_field(config, "moving_probability"),
      speed=speed,
      friction=stream.float_field(config, "friction", 0.0, 100.0),
      restitution=stream.float_field(config, "restitution"),
      frame_dt=stream.float_field(config, "frame_dt", 1e-3, 10.0),
      substeps=stream.int_field(config, "substeps"),
      supersampling=stream.int_field(config, "supersampling"),
      camera_distance=stream.float_field(config, "camera_distance", 1.0, 1e3),
      camera_elevation=stream.float_field(config, "camera_elevation", 5.0,
                                          90.0),
      camera_azimuth=float(stream.field(config, "camera_azimuth")),
      field_of_view=stream.float_field(config, "field_of_view", 5.0, 120.0),
      content_seed=int(stream.field(config, "content_seed")))


def num_examples(config: Any, split: str) -> int:
  return source(config, split)[0]


# ----------------------------------------------------------------- the scene


@dataclasses.dataclass
class SceneObject:
  """A CLEVR object: ``size`` is the sphere's or cylinder's radius or the
  cube's half-side; it stands on the floor (centre at height ``size``)."""
  shape: str
  material: str
  colour: np.ndarray  # [3] in [0, 1].
  size: float  # Radius or half-side.

  @property
  def height(self) -> float:
    return 2 * self.size

  @property
  def collision_radius(self) -> float:
    return self.size * (1.2 if self.shape == "cube" else 1.0)

  @property
  def bound_radius(self) -> float:
    """Radius of a sphere about the centre holding the object."""
    return self.size * (math.sqrt(3) if self.shape == "cube"
                        else math.sqrt(2)) * 1.001

  @property
  def mass(self) -> float:
    s = self.size
    volume = {"sphere": 4 / 3 * math.pi * s**3, "cube": 8 * s**3,
              "cylinder": 2 * math.pi * s**3}[self.shape]
    return volume * (2.0 if self.material == "metal" else 1.0)


def _sample_objects(rng: np.random.Generator, n: int, spec: Spec):
  combos = [(s, m, c) for s in SHAPES for m in MATERIALS
            for c in _COLOUR_NAMES]
  picks = rng.choice(len(combos), size=n, replace=False)
  return [SceneObject(combos[k][0], combos[k][1],
                      np.asarray(COLOURS[combos[k][2]]) / 255.0,
                      spec.object_size)
          for k in picks]


def _initial_state(rng: np.random.Generator, objects, spec: Spec):
  """Positions [n, 2], velocities [n, 2] (units, units/s), yaw [n]."""
  n = len(objects)
  radii = np.array([o.collision_radius for o in objects])
  pos = np.zeros((n, 2))
  vel = np.zeros((n, 2))
  for i in range(n):
    enter = rng.uniform() < spec.enter_probability
    for _ in range(1000):
      if enter:  # Outside the view, heading for the middle.
        angle = rng.uniform(0, 2 * np.pi)
        p = rng.uniform(4.5, 6.0) * np.array([np.cos(angle), np.sin(angle)])
      else:
        p = rng.uniform(-2.8, 2.8, 2)
      if i == 0 or np.all(np.linalg.norm(pos[:i] - p, axis=1)
                          > radii[:i] + radii[i] + 0.1):
        pos[i] = p
        break
    speed = rng.uniform(*spec.speed)
    if enter:
      target = rng.uniform(-1.5, 1.5, 2)
      d = target - pos[i]
      vel[i] = d / max(np.linalg.norm(d), 1e-9) * max(speed, 1.5)
    elif rng.uniform() < spec.moving_probability:
      angle = rng.uniform(0, 2 * np.pi)
      vel[i] = speed * np.array([np.cos(angle), np.sin(angle)])
  yaw = rng.uniform(0, np.pi / 2, n)
  return pos, vel, yaw


def simulate(rng: np.random.Generator, objects, spec: Spec):
  """Rolls out the scene: positions [T, n, 2], yaw [T, n]."""
  pos, vel, yaw = _initial_state(rng, objects, spec)
  n = len(objects)
  radii = np.array([o.collision_radius for o in objects])
  masses = np.array([o.mass for o in objects])
  spin = rng.uniform(-1.0, 1.0, n) * (np.linalg.norm(vel, axis=1) > 0)
  dt = spec.frame_dt / spec.substeps
  positions = np.zeros((spec.episode_length, n, 2))
  yaws = np.zeros((spec.episode_length, n))
  iu, ju = np.triu_indices(n, 1)
  for t in range(spec.episode_length):
    positions[t], yaws[t] = pos, yaw
    for _ in range(spec.substeps):
      pos = pos + vel * dt
      yaw = yaw + spin * dt
      # Coulomb friction: slow down along the velocity, stop at zero.
      speed = np.linalg.norm(vel, axis=1, keepdims=True)
      new_speed = np.maximum(speed - spec.friction * dt, 0.0)
      vel = vel * np.where(speed > 0, new_speed / np.maximum(speed, 1e-12), 0)
      spin = spin * np.where(speed[:, 0] > 0, new_speed[:, 0] /
                             np.maximum(speed[:, 0], 1e-12), 0)
      dist = np.linalg.norm(pos[iu] - pos[ju], axis=1)
      for k in np.nonzero(dist < radii[iu] + radii[ju])[0]:
        i, j = iu[k], ju[k]
        d = pos[i] - pos[j]
        norm = max(float(np.linalg.norm(d)), 1e-9)
        nrm = d / norm
        approach = float(np.dot(vel[i] - vel[j], nrm))
        mi, mj = masses[i], masses[j]
        if approach < 0:  # Impulse with restitution along the normal.
          impulse = (1 + spec.restitution) * approach / (1 / mi + 1 / mj)
          vel[i] = vel[i] - impulse / mi * nrm
          vel[j] = vel[j] + impulse / mj * nrm
        overlap = radii[i] + radii[j] - norm
        pos[i] = pos[i] + overlap * mj / (mi + mj) * nrm
        pos[j] = pos[j] - overlap * mi / (mi + mj) * nrm
  return positions, yaws


# ---------------------------------------------------------------- rendering


def camera_rays(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
  """Origin [3] and unit directions [R, R, 3] (R = size * supersampling)."""
  el, az = math.radians(spec.camera_elevation), math.radians(
      spec.camera_azimuth)
  eye = spec.camera_distance * np.array(
      [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
       math.sin(el)])
  forward = -eye / np.linalg.norm(eye)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  up = np.cross(right, forward)
  r = spec.image_size * spec.supersampling
  half = math.tan(math.radians(spec.field_of_view) / 2)
  c = (np.arange(r) + 0.5) / r * 2 - 1  # [R] in (-1, 1)
  v, u = np.meshgrid(-c * half, c * half, indexing="ij")  # [R, R] each
  d = forward + u[..., None] * right + v[..., None] * up  # [R, R, 3]
  return eye, d / np.linalg.norm(d, axis=-1, keepdims=True)


def _hit_sphere(o, d, centre, r):
  """Ray parameter [N] (inf: miss) and normals [N, 3].

  Origins ``o`` and directions ``d`` are [3] or [N, 3] (broadcast).
  """
  oc = o - centre
  b = np.sum(d * oc, -1)
  c = np.sum(oc * oc, -1) - r * r
  disc = b * b - c
  t = -b - np.sqrt(np.maximum(disc, 0))
  t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
  p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
  return t, (p - centre) / r


def _hit_cube(o, d, centre, s, yaw):
  cos, sin = math.cos(yaw), math.sin(yaw)
  rot = np.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]])  # world->local
  ol = (o - centre) @ rot.T  # [(N,) 3]
  dl = d @ rot.T  # [(N,) 3]
  with np.errstate(divide="ignore", invalid="ignore"):
    inv = 1.0 / dl
    t1, t2 = (-s - ol) * inv, (s - ol) * inv  # [N, 3]
  tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
  tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
  hit = (tmax >= tmin) & (tmin > _EPS)
  t = np.where(hit, tmin, np.inf)
  pl = ol + dl * np.where(hit, tmin, 0)[:, None]  # [N, 3]
  axis = np.argmax(np.abs(pl), axis=1)
  rows = np.arange(len(pl))
  nl = np.zeros_like(pl)
  nl[rows, axis] = np.sign(pl[rows, axis])
  return t, nl @ rot  # local -> world


def _hit_cylinder(o, d, centre, r, h):
  """Vertical cylinder of radius r over z in [centre_z - h/2, + h/2]."""
  z0, z1 = centre[2] - h / 2, centre[2] + h / 2
  o = np.asarray(o, float)
  ox, oy, oz = o[..., 0] - centre[0], o[..., 1] - centre[1], o[..., 2]
  dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
  a = dx * dx + dy * dy
  b = ox * dx + oy * dy
  c = ox * ox + oy * oy - r * r
  disc = b * b - a * c
  with np.errstate(divide="ignore", invalid="ignore"):
    ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
    zs = oz + ts * dz
    side = (disc >= 0) & (a > 1e-12) & (ts > _EPS) & (zs >= z0) & (zs <= z1)
    ts = np.where(side, ts, np.inf)
    tc = (z1 - oz) / dz
    px, py = ox + tc * dx, oy + tc * dy
    cap = (tc > _EPS) & (px * px + py * py <= r * r)
  tc = np.where(cap, tc, np.inf)
  t = np.broadcast_to(np.minimum(ts, tc), np.broadcast(ts, tc).shape)
  p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
  n = np.zeros_like(p)
  use_cap = np.broadcast_to(tc < ts, t.shape)
  n[:, 2] = use_cap
  radial = np.stack([p[:, 0] - centre[0], p[:, 1] - centre[1]], 1) / r
  n[:, :2] = np.where(use_cap[:, None], 0.0, radial)
  return t, n


def _intersect(o, d, obj: SceneObject, xy, yaw):
  centre = np.array([xy[0], xy[1], obj.size])
  if obj.shape == "sphere":
    return _hit_sphere(o, d, centre, obj.size)
  if obj.shape == "cube":
    return _hit_cube(o, d, centre, obj.size, yaw)
  return _hit_cylinder(o, d, centre, obj.size, obj.height)


def _light() -> np.ndarray:
  lv = np.array([-0.45, -0.55, 0.70])
  return lv / np.linalg.norm(lv)


def render_frame(objects, xy: np.ndarray, yaw: np.ndarray, eye: np.ndarray,
                 dirs: np.ndarray, spec: Spec):
  """One frame: (image [S, S, 3] float in [0, 1], ids [S, S] uint8)."""
  r = dirs.shape[0]
  d = dirs.reshape(-1, 3)  # [N, 3]
  n_rays = len(d)
  best_t = np.full(n_rays, np.inf)
  label = np.zeros(n_rays, np.int32)
  normal = np.zeros((n_rays, 3))
  centres = [np.array([xy[k][0], xy[k][1], o.size])
             for k, o in enumerate(objects)]
  for k, obj in enumerate(objects):
    # Only rays in the cone of the object's bounding sphere can hit it.
    to_c = centres[k] - eye
    dist = float(np.linalg.norm(to_c))
    cos_cone = math.cos(math.asin(min(obj.bound_radius / dist, 1.0)))
    cand = np.nonzero(d @ (to_c / dist) >= cos_cone - 1e-6)[0]
    if not len(cand):
      continue
    t, nrm = _intersect(eye, d[cand], obj, xy[k], yaw[k])
    closer = t < best_t[cand]
    sel = cand[closer]
    best_t[sel] = t[closer]
    label[sel] = k + 1
    normal[sel] = nrm[closer]
  # The floor (z = 0) where no object is hit.
  with np.errstate(divide="ignore", invalid="ignore"):
    t_floor = -eye[2] / d[:, 2]
  floor = (label == 0) & (d[:, 2] < 0) & (t_floor > 0)
  t_hit = np.where(label > 0, best_t, np.where(floor, t_floor, 0.0))
  points = eye + d * t_hit[:, None]  # [N, 3]
  normal[floor] = (0.0, 0.0, 1.0)
  light = _light()
  # Shadow rays towards the light.
  surf = (label > 0) | floor
  lit = np.ones(n_rays, bool)
  origins = points + normal * 1e-3
  idx = np.nonzero(surf)[0]
  for k, obj in enumerate(objects):
    # Shadow rays passing within the bounding sphere; self-shadowing is
    # Lambert's job.
    rel = centres[k] - origins[idx]  # [M, 3]
    along = rel @ light
    perp2 = np.sum(rel * rel, 1) - along**2
    r2 = obj.bound_radius**2
    sel = idx[(perp2 <= r2) & (along > -obj.bound_radius)
              & (label[idx] != k + 1)]
    if not len(sel):
      continue
    t, _ = _intersect(origins[sel], light, obj, xy[k], yaw[k])
    lit[sel[np.isfinite(t)]] = False
  diffuse = np.clip(normal @ light, 0, None) * lit
  base = np.where(label[:, None] > 0, 0.0, _FLOOR)
  colours = np.zeros((n_rays, 3))
  for k, obj in enumerate(objects):
    colours[label == k + 1] = obj.colour
  metal = np.zeros(n_rays, bool)
  for k, obj in enumerate(objects):
    if obj.material == "metal":
      metal |= label == k + 1
  albedo = np.where(label[:, None] > 0, colours, base)
  shade = _AMBIENT + (1 - _AMBIENT) * diffuse
  image = albedo * shade[:, None]
  if metal.any():
    view = -d
    half = light + view
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec_term = np.clip(np.sum(normal * half, 1), 0, None) ** 60 * lit
    refl = d - 2 * np.sum(d * normal, 1, keepdims=True) * normal
    env = np.where(refl[:, 2:3] > 0, _SKY, _FLOOR)  # [N, 3]
    metal_rgb = (0.3 * albedo * shade[:, None] + 0.8 * env * albedo
                 + 0.15 * env + 1.2 * spec_term[:, None])
    image = np.where(metal[:, None], metal_rgb, image)
  sky = ~surf
  image[sky] = _SKY
  image = np.clip(image, 0, 1).reshape(r, r, 3)
  label = label.reshape(r, r)
  ss, s = spec.supersampling, spec.image_size
  image = image.reshape(s, ss, s, ss, 3).mean(axis=(1, 3))
  if ss > 1:  # Majority label over each pixel's rays.
    blocks = label.reshape(s, ss, s, ss).transpose(0, 2, 1, 3).reshape(
        s, s, ss * ss)
    counts = np.stack([(blocks == k).sum(-1) for k in range(
        len(objects) + 1)], -1)
    label = np.argmax(counts, -1)
  return image, label.astype(np.uint8)


def generate_episode(spec: Spec, split: str, index: int) -> dict[str, Any]:
  """One video: ``video`` uint8 [T, S, S, 3], ``segmentation`` uint8."""
  rng = np.random.default_rng([
      vc.CONTENT_STREAM, _DATASET_TAG, stream.seed_word(spec.content_seed),
      stream.split_id(split), int(index)])
  n = int(rng.integers(spec.num_objects[0], spec.num_objects[1] + 1))
  objects = _sample_objects(rng, n, spec)
  positions, yaws = simulate(rng, objects, spec)
  eye, dirs = camera_rays(spec)
  s, t_len = spec.image_size, spec.episode_length
  video = np.zeros((t_len, s, s, 3), np.uint8)
  seg = np.zeros((t_len, s, s), np.uint8)
  for t in range(t_len):
    image, ids = render_frame(objects, positions[t], yaws[t], eye, dirs, spec)
    video[t] = np.round(image * 255).astype(np.uint8)
    seg[t] = ids
  return {"video": video, "segmentation": seg, "num_objects": n,
          "attributes": [(o.shape, o.material,
                          tuple(int(v) for v in np.round(o.colour * 255)))
                         for o in objects]}


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
  int32 [b, T, S, S] and, when not repeating, ``valid`` bool [b].
  """
  return vc.episodes_dataset(
      config, split, source(config, split), batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat)
