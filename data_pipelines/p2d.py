"""P2D-like Panda pushing videos, simulated headless with pybullet.

APEX (Wu et al. 2021, Sec. IV) introduces the Panda Pushing Dataset: "a
Panda arm interacting with objects in simulation [with] pixel-level ground
truth segmentations as well as object tracking IDs. Up to three objects are
spawned in each episode and the robot-arm moves along a randomly selected
straight line in the horizontal direction. Objects ... are sampled from a
set of 14 common objects ... with varying shapes, colours, and textures ...
2,000 for training, 200 for validation, and 200 for testing ... 20 frames
with a resolution of 128 x 128."

This module rebuilds it with what pybullet ships (``pybullet_data``): a
Franka Panda (joint limits and a rest pose keep its null-space inverse
kinematics sane) on a wooden table, and ``num_objects`` objects drawn from
`OBJECTS` (14 kinds: mug, duck, teddy, soccer ball, Lego brick, Jenga block,
domino, a flat random mesh and primitive coffee can, soup can, apple, orange,
cracker box and toy prism). One object is placed on the push line, the
others anywhere on the workspace. The gripper (fingers closed) moves at
``push_height`` above the table along a straight line of random direction
and length ``line_length``, from its start to its end over the episode.
Frames come from pybullet's TinyRenderer (CPU, no GPU or display) with its
per-pixel body ids.

``segmentation``: the arm is track id 1, object ``i`` is ``i + 2``; the
table and floor are background (0). Objects may be pushed out of view or be
hidden behind the arm: empty masks are normal.

pybullet is an optional dependency: ``pip install .[sim]`` (or ``pip install
pybullet``). Determinism: an episode is a pure function of ``(content_seed,
split, index)`` and the scene fields (each episode runs in a fresh pybullet
simulation); ``get_dataset``'s ``seed`` only shuffles.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import stream
from data_pipelines import video_common as vc

NAME = "p2d"
_DATASET_TAG = 4
_CONNECT_LOCK = threading.Lock()
ARM_ID = 1  # Track id of the Panda arm; objects are 2, 3, ...

# name -> (kind, source or primitive, size parameters, scale, rgba, mass kg).
# Meshes from pybullet_data keep their own materials/textures (rgba None).
OBJECTS = {
    "mug": ("urdf", "objects/mug.urdf", None, 1.0, None, 0.2),
    "duck": ("urdf", "duck_vhacd.urdf", None, 1.0, None, 0.15),
    "teddy": ("urdf", "teddy_vhacd.urdf", None, 1.0, None, 0.15),
    "soccer_ball": ("urdf", "soccerball.urdf", None, 0.07, None, 0.1),
    "lego": ("urdf", "lego/lego.urdf", None, 2.5, None, 0.1),
    "jenga": ("urdf", "jenga/jenga.urdf", None, 0.8, None, 0.1),
    "domino": ("urdf", "domino/domino.urdf", None, 2.0, None, 0.1),
    "flat_mesh": ("urdf", "random_urdfs/000/000.urdf", None, 0.8,
                  (0.25, 0.55, 0.85, 1), 0.15),
    "coffee_can": ("cylinder", None, (0.04, 0.11), 1.0,
                   (0.15, 0.15, 0.55, 1), 0.3),
    "soup_can": ("cylinder", None, (0.033, 0.09), 1.0,
                 (0.8, 0.1, 0.1, 1), 0.25),
    "apple": ("sphere", None, (0.038,), 1.0, (0.75, 0.12, 0.1, 1), 0.15),
    "orange": ("sphere", None, (0.036,), 1.0, (1.0, 0.55, 0.05, 1), 0.15),
    "cracker_box": ("box", None, (0.035, 0.06, 0.08), 1.0,
                    (0.95, 0.8, 0.15, 1), 0.2),
    "toy_prism": ("mesh", "toys/prism.obj", (0.06, 0.06, 0.06), 1.0,
                  (0.2, 0.7, 0.3, 1), 0.1),
}

# Panda: 7 arm joints then 2 finger joints (the movable DoFs, in order).
_ARM_JOINTS = tuple(range(7))
_FINGER_JOINTS = (9, 10)
EE_LINK = 11  # panda_grasptarget_hand.
_LOWER = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973,
          0.0, 0.0)
_UPPER = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 0.04,
          0.04)
REST_POSE = (0.0, -0.2, 0.0, -2.3, 0.0, 2.1, 0.785, 0.0, 0.0)
_FORCES = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0, 20.0, 20.0)
TABLE_TOP = 0.625  # pybullet_data table/table.urdf.
ARM_BASE = (0.0, 0.0, TABLE_TOP)
_CLEARANCE = 0.11  # Metres between objects, and from the gripper's start.
GENERATION_FIELDS = (
    "image_size", "episode_length", "num_objects", "objects", "push_height",
    "line_length", "workspace_x", "workspace_y", "sim_hz",
    "sim_steps_per_frame", "settle_steps", "camera_eye", "camera_target",
    "field_of_view", "shadows", "content_seed")

_MISSING = (
    "pybullet is not installed; the p2d dataset simulates its episodes with "
    "it. Install the optional extra: `pip install .[sim]` (or `pip install "
    "pybullet`), or read a directory written by `python -m "
    "data_pipelines.generate p2d` elsewhere (data.data_dir).")


def require_pybullet():
  """Imports pybullet, with a clear message when it is missing."""
  # pylint: disable=g-import-not-at-top
  try:
    import pybullet
    import pybullet_data
    from pybullet_utils import bullet_client
  except ImportError as e:
    raise ImportError(_MISSING) from e
  return pybullet, pybullet_data, bullet_client


def default_config() -> ml_collections.ConfigDict:
  """The ``data`` section of a config for this dataset (unlocked)."""
  c = ml_collections.ConfigDict()
  c.name = NAME
  # Directory written by `python -m data_pipelines.generate p2d`; empty:
  # simulate on the fly (slow: about a second per episode).
  c.data_dir = ""
  c.image_size = 128  # APEX: 128x128.
  c.episode_length = 20  # APEX: 20 frames.
  c.num_frames = 20  # Frames per example: the first num_frames.
  c.num_objects = (1, 3)  # APEX: up to three objects.
  c.objects = tuple(OBJECTS)  # Kinds drawn from (APEX: 14 objects).
  c.push_height = 0.025  # Gripper tip above the table top, metres.
  c.line_length = (0.15, 0.35)  # Push line length, metres.
  c.workspace_x = (0.4, 0.72)  # Push line end points: x range (metres,
  c.workspace_y = (-0.3, 0.3)  # from the arm's base) and y range.
  c.sim_hz = 240  # Physics steps per second.
  c.sim_steps_per_frame = 20  # 12 frames per second.
  c.settle_steps = 120  # Steps before the first frame (objects settle).
  c.camera_eye = (1.3, 0.0, 1.4)  # Metres; opposite the arm, above.
  c.camera_target = (0.45, 0.0, 0.6)
  c.field_of_view = 48.0  # Degrees.
  c.shadows = True  # TinyRenderer shadows.
  c.num_train = 2_000  # APEX: 2,000 / 200 / 200.
  c.num_validation = 200
  c.num_test = 200
  c.content_seed = 0  # Seed of the episodes' content (generate --seed).
  # On the fly: keep each simulated episode in memory (small splits, e.g.
  # a CPU demo; a split costs T*H*W*4 bytes an episode).
  c.cache_episodes = False
  c.num_parallel_calls = 2  # tf.data: batches produced in parallel.
  c.prefetch = 2  # tf.data: batches prefetched.
  return c


PRESETS: dict[str, dict[str, Any]] = {}


def connect():
  """A headless (DIRECT) pybullet client; pybullet's C side prints a line
  ("argv[0]=") on every connection, which is kept off stdout (the file
  descriptor is swapped under a lock: tf.data simulates in threads)."""
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  pybullet, _, bullet_client = require_pybullet()
  with _CONNECT_LOCK:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
      with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        return bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
    finally:
      os.dup2(saved, 1)
      os.close(saved)


def preset_config(preset: str) -> ml_collections.ConfigDict:
  return stream.preset(NAME, PRESETS, default_config, preset)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Validated scene fields (picklable, for generator workers)."""
  image_size: int
  episode_length: int
  num_objects: tuple[int, int]
  objects: tuple[str, ...]
  push_height: float
  line_length: tuple[float, float]
  workspace_x: tuple[float, float]
  workspace_y: tuple[float, float]
  sim_hz: int
  sim_steps_per_frame: int
  settle_steps: int
  camera_eye: tuple[float, float, float]
  camera_target: tuple[float, float, float]
  field_of_view: float
  shadows: bool
  content_seed: int


def spec_from_config(config: Any) -> Spec:
  """Validates the scene fields; raises ValueError naming a field."""
  objects = tuple(stream.field(config, "objects"))
  unknown = [o for o in objects if o not in OBJECTS]
  if not objects or unknown:
    raise ValueError(f"data.objects has unknown kinds {unknown}; expected a "
                     f"non-empty subset of {tuple(OBJECTS)}.")
  n = stream.int_range(config, "num_objects", minimum=0)
  if n[1] > 8:
    raise ValueError(f"data.num_objects={n} is invalid; expected at most 8.")
  eye = tuple(float(v) for v in stream.field(config, "camera_eye"))
  target = tuple(float(v) for v in stream.field(config, "camera_target"))
  if len(eye) != 3 or len(target) != 3:
    raise ValueError("data.camera_eye and data.camera_target must be "
                     "(x, y, z) in metres.")
  lengths = stream.float_range(config, "line_length")
  if lengths[0] <= 0:
    raise ValueError(f"data.line_length={lengths} must be positive.")
  return Spec(
      image_size=stream.int_field(config, "image_size", 8),
      episode_length=stream.int_field(config, "episode_length", 2),
      num_objects=n, objects=objects,
      push_height=float(stream.field(config, "push_height")),
      line_length=lengths,
      workspace_x=stream.float_range(config, "workspace_x"),
      workspace_y=stream.float_range(config, "workspace_y"),
      sim_hz=stream.int_field(config, "sim_hz"),
      sim_steps_per_frame=stream.int_field(config, "sim_steps_per_frame"),
      settle_steps=stream.int_field(config, "settle_steps", 0),
      camera_eye=eye, camera_target=target,
      field_of_view=float(stream.field(config, "field_of_view")),
      shadows=bool(stream.field(config, "shadows")),
      content_seed=int(stream.field(config, "content_seed")))


def num_examples(config: Any, split: str) -> int:
  if not stream.field(config, "data_dir"):  # Counting needs no simulator.
    return stream.num_split_examples(config, split)
  return source(config, split)[0]


# ---------------------------------------------------------------- simulation


def _push_line(rng: np.random.Generator, spec: Spec):
  """Start and end [2] of a straight horizontal push inside the workspace."""
  (x0, x1), (y0, y1) = spec.workspace_x, spec.workspace_y
  for _ in range(1000):
    start = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(*spec.line_length)
    end = start + length * np.array([np.cos(angle), np.sin(angle)])
    if x0 <= end[0] <= x1 and y0 <= end[1] <= y1:
      return start, end
  raise RuntimeError("No push line of data.line_length fits in "
                     "data.workspace_x x data.workspace_y.")


def _object_positions(rng: np.random.Generator, n: int, start, end,
                      spec: Spec):
  """[n, 2] table positions: the first on the push line, none on the start."""
  (x0, x1), (y0, y1) = spec.workspace_x, spec.workspace_y
  out = []
  for i in range(n):
    for _ in range(1000):
      if i == 0:  # On the line, clear of the gripper's start.
        length = float(np.linalg.norm(end - start))
        direction = (end - start) / length
        normal = np.array([-direction[1], direction[0]])
        along = max(rng.uniform(0.4, 0.8) * length, _CLEARANCE + 0.01)
        p = start + along * direction + rng.uniform(-0.03, 0.03) * normal
      else:
        p = np.array([rng.uniform(x0 - 0.05, x1 + 0.05),
                      rng.uniform(y0 - 0.05, y1 + 0.05)])
      if (np.linalg.norm(p - start) > _CLEARANCE and
          all(np.linalg.norm(p - q) > _CLEARANCE for q in out)):
        out.append(p)
        break
    else:
      raise RuntimeError(f"Could not place {n} objects on the table.")
  return np.asarray(out).reshape(n, 2)


def spawn(client, data_path: str, kind: str, xy, yaw: float) -> int:
  """Creates one object resting near the table top; returns its body id."""
  shape, source, size, scale, rgba, mass = OBJECTS[kind]
  p = client
  orn = p.getQuaternionFromEuler([0, 0, yaw])
  if shape == "urdf":
    body = p.loadURDF(source, [xy[0], xy[1], TABLE_TOP + 0.1], orn,
                      globalScaling=scale)
    if rgba is not None:
      p.changeVisualShape(body, -1, rgbaColor=rgba)
    # Rest on the table: lower the body until its AABB touches the top.
    lo, _ = p.getAABB(body)
    pos, _ = p.getBasePositionAndOrientation(body)
    p.resetBasePositionAndOrientation(
        body, [pos[0], pos[1], pos[2] - (lo[2] - TABLE_TOP) + 0.002], orn)
    p.changeDynamics(body, -1, mass=mass)
    return body
  if shape == "sphere":
    (r,) = size
    col = p.createCollisionShape(p.GEOM_SPHERE, radius=r)
    vis = p.createVisualShape(p.GEOM_SPHERE, radius=r, rgbaColor=rgba)
    z = r
  elif shape == "cylinder":
    r, h = size
    col = p.createCollisionShape(p.GEOM_CYLINDER, radius=r, height=h)
    vis = p.createVisualShape(p.GEOM_CYLINDER, radius=r, length=h,
                              rgbaColor=rgba)
    z = h / 2
  elif shape == "box":
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=size)
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=size, rgbaColor=rgba)
    z = size[2]
  else:  # A mesh from pybullet_data, scaled to `size`.
    import os  # pylint: disable=g-import-not-at-top
    path = os.path.join(data_path, source)
    col = p.createCollisionShape(p.GEOM_MESH, fileName=path, meshScale=size)
    vis = p.createVisualShape(p.GEOM_MESH, fileName=path, meshScale=size,
                              rgbaColor=rgba)
    z = 0.0
  body = p.createMultiBody(mass, col, vis,
                           [xy[0], xy[1], TABLE_TOP + z + 0.002], orn)
  if shape == "mesh":
    lo, _ = p.getAABB(body)
    pos, _ = p.getBasePositionAndOrientation(body)
    p.resetBasePositionAndOrientation(
        body, [pos[0], pos[1], pos[2] - (lo[2] - TABLE_TOP) + 0.002], orn)
  p.changeDynamics(body, -1, lateralFriction=0.6, rollingFriction=0.001,
                   spinningFriction=0.001)
  return body


def ik(client, arm: int, target_xyz, orn) -> list[float]:
  """Joint angles putting the gripper at ``target_xyz`` with ``orn``."""
  lower, upper = list(_LOWER), list(_UPPER)
  return list(client.calculateInverseKinematics(
      arm, EE_LINK, list(target_xyz), orn, lowerLimits=lower,
      upperLimits=upper,
      jointRanges=[u - l for l, u in zip(lower, upper)],
      restPoses=list(REST_POSE), maxNumIterations=100,
      residualThreshold=1e-5))


def set_joints(client, arm: int, q) -> None:
  """Teleports the arm's joints (and fingers) to ``q``."""
  for j, v in zip(_ARM_JOINTS + _FINGER_JOINTS, q):
    client.resetJointState(arm, j, v)


def drive(client, arm: int, q) -> None:
  """Position control of the arm towards ``q`` (fingers closed)."""
  q = list(q[:7]) + [0.0, 0.0]  # Fingers closed: a compact pusher.
  client.setJointMotorControlArray(
      arm, list(_ARM_JOINTS + _FINGER_JOINTS), client.POSITION_CONTROL,
      targetPositions=q, forces=list(_FORCES))


def generate_episode(spec: Spec, split: str, index: int,
                     return_state: bool = False) -> dict[str, Any]:
  """One episode: ``video`` uint8 [T, S, S, 3], ``segmentation`` uint8.

  With ``return_state``, also ``ee_positions`` [T, 3] (gripper tip, world
  metres), ``line`` (start, end) and ``kinds`` of the objects.
  """
  _, pybullet_data, _ = require_pybullet()
  rng = np.random.default_rng([
      vc.CONTENT_STREAM, _DATASET_TAG, stream.seed_word(spec.content_seed),
      stream.split_id(split), int(index)])
  n = int(rng.integers(spec.num_objects[0], spec.num_objects[1] + 1))
  kinds = [spec.objects[k] for k in rng.integers(0, len(spec.objects), n)]
  start, end = _push_line(rng, spec)
  positions = _object_positions(rng, n, start, end, spec)
  yaws = rng.uniform(0, 2 * np.pi, n)

  p = connect()
  try:
    data_path = pybullet_data.getDataPath()
    p.setAdditionalSearchPath(data_path)
    p.resetSimulation()
    p.setPhysicsEngineParameter(deterministicOverlappingPairs=1,
                                fixedTimeStep=1.0 / spec.sim_hz)
    p.setGravity(0, 0, -9.81)
    p.loadURDF("plane.urdf")
    p.loadURDF("table/table.urdf", [0.5, 0, 0], useFixedBase=True)
    arm = p.loadURDF("franka_panda/panda.urdf", list(ARM_BASE),
                     useFixedBase=True)
    bodies = [spawn(p, data_path, k, xy, yaw)
              for k, xy, yaw in zip(kinds, positions, yaws)]
    track = {arm: ARM_ID}
    track.update({b: i + 2 for i, b in enumerate(bodies)})

    orn = p.getQuaternionFromEuler([math.pi, 0.0, 0.0])  # Pointing down.
    z = TABLE_TOP + spec.push_height

    def target(u):
      xy = (1 - u) * start + u * end
      return (xy[0], xy[1], z)

    q = list(REST_POSE)
    set_joints(p, arm, q)
    for _ in range(20):  # Kinematic IK refinement at the start pose.
      q = ik(p, arm, target(0.0), orn)
      set_joints(p, arm, q)
    for _ in range(spec.settle_steps):
      drive(p, arm, q)
      p.stepSimulation()

    s = spec.image_size
    view = p.computeViewMatrix(list(spec.camera_eye),
                               list(spec.camera_target), [0, 0, 1])
    proj = p.computeProjectionMatrixFOV(spec.field_of_view, 1.0, 0.05, 6.0)
    lut_keys = np.array(sorted(track), np.int64)
    lut_vals = np.array([track[k] for k in lut_keys], np.uint8)
    t_len = spec.episode_length
    video = np.zeros((t_len, s, s, 3), np.uint8)
    seg = np.zeros((t_len, s, s), np.uint8)
    ee = np.zeros((t_len, 3))
    steps = spec.sim_steps_per_frame
    for t in range(t_len):
      _, _, rgb, _, ids = p.getCameraImage(
          s, s, view, proj, renderer=p.ER_TINY_RENDERER,
          shadow=int(spec.shadows), lightDirection=[0.6, -0.4, 1.0])
      video[t] = np.asarray(rgb, np.uint8).reshape(s, s, 4)[..., :3]
      ids = np.asarray(ids, np.int64).reshape(s, s)
      ids = np.where(ids >= 0, ids & ((1 << 24) - 1), -1)
      pos = np.clip(np.searchsorted(lut_keys, ids), 0, len(lut_keys) - 1)
      seg[t] = np.where(lut_keys[pos] == ids, lut_vals[pos], 0)
      ee[t] = p.getLinkState(arm, EE_LINK)[4]
      if t + 1 < t_len:  # Move on along the line until the next frame.
        for k in range(1, steps + 1):
          u = (t + k / steps) / (t_len - 1)
          q = ik(p, arm, target(u), orn)
          drive(p, arm, q)
          p.stepSimulation()
  finally:
    p.disconnect()
  out = {"video": video, "segmentation": seg, "num_objects": n + 1}
  if return_state:
    out.update(ee_positions=ee, line=(start, end), kinds=kinds)
  return out


# ------------------------------------------------------------------ tf.data


def source(config: Any, split: str):
  if not stream.field(config, "data_dir"):
    require_pybullet()
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
  int32 [b, T, S, S] (1 = arm, 2.. = objects) and, when not repeating,
  ``valid`` bool [b].
  """
  return vc.episodes_dataset(
      config, split, source(config, split), batch_size=batch_size, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count, repeat=repeat)
