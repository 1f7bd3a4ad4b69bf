"""The object-arrangement task of APEX (paper 000, Sec. IV-C), simulated.

"A robot is required to pick and place objects on a table according to a
goal image. This image is first parsed into foreground objects and
background. [...] the 3D location and shape of an object are obtained by
filtering a depth image according to the object mask. The current scene is
processed in the same fashion, which allows the current objects to be
matched to the associated objects in the goal image [...]. The current and
desired location and shape of each object serve as inputs to a heuristic
control policy that executes a sequence of sub-tasks to move the objects.
[...] a check for whether the target location is occupied by other objects
is conducted before executing a sub-task. If all target locations are
occupied, one of the unsorted objects is moved to an edge of the table to
make space for the other objects. This object will be moved to its target
space at the end." Tasks of 2, 3 and 4 objects, 150 scenarios each, "the
same group of objects spawned in different locations"; the score is "the
mean distance of the final object locations relative to the desired object
locations", with "a fixed penalty of 1m for outliers where an object falls
off the table" (Table IV).

This module is the simulator side (no model): the P2D-like scene of
`data_pipelines.p2d` (Panda, table, camera, objects), an RGB + depth +
body-id camera, depth unprojection, per-mask 3D object states, the
occupancy-checking planner and pick-and-place execution. `ocjax.eval.
arrangement` parses the images with a trained model and scores the task.
Choices the paper leaves open are listed in docs/apex.md ("Object
arrangement"); the main ones: a grasp is a fixed constraint between the
gripper tip and the object's top (a suction-style grasp: the paper does not
say how its robot grasps), the arm moves by inverse kinematics and position
control along straight segments, and the distance is between the object's
centre of mass at the end and in the goal scene (3D, metres).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize

from data_pipelines import p2d
from data_pipelines import stream

_TASK_STREAM = 0x7A5C  # rng stream of the arrangement scenarios
# The default group: "the same group of objects" in every scenario of a
# task; a task with n objects uses the first n (choice: rigid, graspable
# kinds that neither roll nor topple easily).
DEFAULT_GROUP = ("soup_can", "cracker_box", "jenga", "coffee_can")
OFF_TABLE_PENALTY = 1.0  # metres (Table IV)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One arrangement task (the scene fields of `data_pipelines.p2d`)."""
  group: tuple[str, ...] = DEFAULT_GROUP[:2]
  image_size: int = 128
  workspace_x: tuple[float, float] = (0.4, 0.72)
  workspace_y: tuple[float, float] = (-0.3, 0.3)
  clearance: float = 0.11  # metres between spawned objects
  camera_eye: tuple[float, float, float] = (1.3, 0.0, 1.4)
  camera_target: tuple[float, float, float] = (0.45, 0.0, 0.6)
  field_of_view: float = 48.0
  shadows: bool = True
  sim_hz: int = 240
  settle_steps: int = 120
  speed: float = 0.5  # m/s of the gripper along a segment
  carry_height: float = 0.4  # metres above the table while carrying
  margin: float = 0.01  # metres between footprints for a free target
  seed: int = 0

  @classmethod
  def from_config(cls, data: Any, group: Sequence[str],
                  seed: int = 0) -> "TaskSpec":
    """The scene fields of a p2d data config (image size, camera,
    workspace), a group of object kinds."""
    unknown = [g for g in group if g not in p2d.OBJECTS]
    if not group or unknown:
      raise ValueError(f"Unknown object kinds {unknown} in the group; "
                       f"expected names from {tuple(p2d.OBJECTS)}.")
    return cls(
        group=tuple(group),
        image_size=int(stream.field(data, "image_size")),
        workspace_x=stream.float_range(data, "workspace_x"),
        workspace_y=stream.float_range(data, "workspace_y"),
        camera_eye=tuple(float(v) for v in stream.field(data, "camera_eye")),
        camera_target=tuple(float(v) for v in
                            stream.field(data, "camera_target")),
        field_of_view=float(stream.field(data, "field_of_view")),
        shadows=bool(stream.field(data, "shadows")),
        sim_hz=int(stream.field(data, "sim_hz")),
        settle_steps=int(stream.field(data, "settle_steps")), seed=seed)


# ------------------------------------------------------------ perception


def unproject(depth: np.ndarray, view: Sequence[float],
              proj: Sequence[float]) -> np.ndarray:
  """World points ``[H, W, 3]`` of an OpenGL depth buffer ``[H, W]`` in
  [0, 1] under pybullet's (column-major) view and projection matrices."""
  h, w = depth.shape
  pv = (np.asarray(proj, np.float64).reshape(4, 4).T
        @ np.asarray(view, np.float64).reshape(4, 4).T)
  cols = (2.0 * (np.arange(w) + 0.5) / w) - 1.0
  rows = 1.0 - (2.0 * (np.arange(h) + 0.5) / h)
  x, y = np.meshgrid(cols, rows)
  ndc = np.stack([x, y, 2.0 * depth - 1.0, np.ones_like(x)], -1)
  world = ndc.reshape(-1, 4) @ np.linalg.inv(pv).T
  return (world[:, :3] / world[:, 3:]).reshape(h, w, 3)


@dataclasses.dataclass
class Detection:
  """One parsed object (its "location and shape"): ``appearance`` (z_what
  or an id), 3D ``position`` (the centre of its points' 5-95% box in XY,
  their median height), ``top`` (the 95th percentile of their heights),
  ``radius`` (the 90th percentile of their XY distances from the centre),
  ``pixels`` (mask size)."""
  appearance: np.ndarray
  position: np.ndarray
  top: float
  radius: float
  pixels: int


def object_states(labels: np.ndarray, points: np.ndarray,
                  appearances: dict[int, np.ndarray], *,
                  min_pixels: int = 5,
                  workspace_x: tuple[float, float] = (0.25, 0.95),
                  workspace_y: tuple[float, float] = (-0.45, 0.45),
                  max_height: float = 0.2) -> list[Detection]:
  """The 3D state of each labelled object (``labels [H, W]`` ids, points
  ``[H, W, 3]``); ids without an appearance, masks under ``min_pixels``
  and parts off the workspace or higher than ``max_height`` above the table
  (the arm: the task excludes it) are dropped."""
  out = []
  top_of_table = p2d.TABLE_TOP
  for k, app in appearances.items():
    sel = points[labels == k]
    if len(sel) < min_pixels:
      continue
    lo, hi = np.percentile(sel[:, :2], [5, 95], axis=0)
    pos = np.concatenate([(lo + hi) / 2, [np.median(sel[:, 2])]])
    if not (workspace_x[0] <= pos[0] <= workspace_x[1]
            and workspace_y[0] <= pos[1] <= workspace_y[1]
            and top_of_table - 0.02 <= pos[2] <= top_of_table + max_height):
      continue
    radius = np.percentile(np.linalg.norm(sel[:, :2] - pos[:2], axis=-1), 90)
    out.append(Detection(np.asarray(app, np.float64), pos,
                         float(np.percentile(sel[:, 2], 95)), float(radius),
                         len(sel)))
  return out


def match(current: list[Detection], goal: list[Detection]
          ) -> list[tuple[int, int]]:
  """Pairs ``(current index, goal index)`` with the smallest total L2
  distance of appearances (one-to-one; the smaller side is all matched)."""
  if not current or not goal:
    return []
  a = np.stack([d.appearance for d in current])
  b = np.stack([d.appearance for d in goal])
  cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
  rows, cols = optimize.linear_sum_assignment(cost)
  return list(zip(rows.tolist(), cols.tolist()))


# ---------------------------------------------------------------- policy


@dataclasses.dataclass
class Move:
  """A pick-and-place sub-task: the object at ``source`` (its top at
  ``source_top``) to ``target`` (its top at ``target_top``); ``item`` is the
  matched pair it serves, ``parking`` whether it clears a target."""
  item: int
  source: np.ndarray
  source_top: float
  target: np.ndarray
  target_top: float
  parking: bool = False


def plan(current: list[Detection], goal: list[Detection],
         pairs: list[tuple[int, int]], spec: TaskSpec) -> list[Move]:
  """The heuristic policy's sub-tasks (Sec. IV-C): move each matched object
  whose target is free (no other object's footprint, a disc of its
  ``radius``, within the moved one's plus ``margin``, XY);
  when every remaining target is occupied, park one unsorted object at the
  table's edge; parked objects go to their targets at the end."""
  where = {i: current[i].position.copy() for i in range(len(current))}
  tops = {i: current[i].top for i in range(len(current))}
  radii = {i: current[i].radius for i in range(len(current))}
  free = lambda c, xy: all(
      np.linalg.norm(where[o][:2] - xy[:2]) > radii[o] + radii[c]
      + spec.margin for o in where if o != c)
  todo = [(c, g) for c, g in pairs]
  moves: list[Move] = []
  parks = _parking_spots(spec)
  for _ in range(4 * len(todo) + 4):
    if not todo:
      break
    for n, (c, g) in enumerate(todo):
      tgt = goal[g].position
      if free(c, tgt):
        moves.append(Move(c, where[c].copy(), tops[c], tgt.copy(),
                          goal[g].top))
        where[c], tops[c] = tgt.copy(), goal[g].top
        todo.pop(n)
        break
    else:  # every remaining target is occupied: park the first
      c, _ = todo[0]
      spot = max(parks, key=lambda s: min(
          np.linalg.norm(s[:2] - where[o][:2]) - radii[o] for o in where
          if o != c))
      height = tops[c] - where[c][2]
      spot = np.array([spot[0], spot[1], where[c][2]])
      moves.append(Move(c, where[c].copy(), tops[c], spot, spot[2] + height,
                        parking=True))
      where[c], tops[c] = spot, spot[2] + height
      todo.append(todo.pop(0))
  return moves


def _parking_spots(spec: TaskSpec) -> list[np.ndarray]:
  """Spots along the table's side edges, reachable by the arm."""
  xs = np.linspace(spec.workspace_x[0], spec.workspace_x[1], 4)
  return [np.array([x, s * 0.42, 0.0]) for x in xs for s in (-1.0, 1.0)]


# ------------------------------------------------------------ simulation


class Scene:
  """A pybullet scene of the task: the Panda at its rest pose, the table,
  the group's objects; renders, moves objects, and executes `Move`s."""

  def __init__(self, spec: TaskSpec):
    _, pybullet_data, _ = p2d.require_pybullet()
    self.spec = spec
    self.p = p = p2d.connect()
    self.data_path = pybullet_data.getDataPath()
    p.setAdditionalSearchPath(self.data_path)
    p.setPhysicsEngineParameter(deterministicOverlappingPairs=1,
                                fixedTimeStep=1.0 / spec.sim_hz)
    p.setGravity(0, 0, -9.81)
    p.loadURDF("plane.urdf")
    p.loadURDF("table/table.urdf", [0.5, 0, 0], useFixedBase=True)
    self.arm = p.loadURDF("franka_panda/panda.urdf", list(p2d.ARM_BASE),
                          useFixedBase=True)
    self.down = p.getQuaternionFromEuler([math.pi, 0.0, 0.0])
    self.bodies: list[int] = []
    self.view = p.computeViewMatrix(list(spec.camera_eye),
                                    list(spec.camera_target), [0, 0, 1])
    self.near, self.far = 0.05, 6.0
    self.proj = p.computeProjectionMatrixFOV(spec.field_of_view, 1.0,
                                             self.near, self.far)
    self.home()

  def close(self) -> None:
    self.p.disconnect()

  def home(self) -> None:
    p2d.set_joints(self.p, self.arm, p2d.REST_POSE)
    self.q = list(p2d.REST_POSE)

  def spawn(self, positions: np.ndarray, yaws: np.ndarray) -> None:
    """Creates the group's objects at table positions ``[n, 2]``."""
    for kind, xy, yaw in zip(self.spec.group, positions, yaws):
      self.bodies.append(p2d.spawn(self.p, self.data_path, kind, xy, yaw))

  def place(self, positions: np.ndarray, yaws: np.ndarray) -> None:
    """Puts the existing objects at new table positions, resting."""
    p = self.p
    for b, xy, yaw in zip(self.bodies, positions, yaws):
      orn = p.getQuaternionFromEuler([0, 0, yaw])
      pos, _ = p.getBasePositionAndOrientation(b)
      p.resetBasePositionAndOrientation(b, [xy[0], xy[1], pos[2] + 0.2],
                                        orn)
      lo, _ = p.getAABB(b)
      p.resetBasePositionAndOrientation(
          b, [xy[0], xy[1], pos[2] + 0.2 - (lo[2] - p2d.TABLE_TOP) + 0.002],
          orn)
      p.resetBaseVelocity(b, [0, 0, 0], [0, 0, 0])

  def settle(self, steps: int | None = None) -> None:
    for _ in range(self.spec.settle_steps if steps is None else steps):
      self.drive(self.q)
      self.p.stepSimulation()

  def positions(self) -> np.ndarray:
    """The objects' centres of mass ``[n, 3]`` (world metres)."""
    return np.array([self.p.getBasePositionAndOrientation(b)[0]
                     for b in self.bodies])

  def render(self) -> dict[str, np.ndarray]:
    """``image`` uint8 [S, S, 3], ``points`` [S, S, 3] (world metres from
    the depth buffer), ``ids`` int [S, S] (0 background, object ``i`` is
    ``i + 1``, the arm -1)."""
    s = self.spec.image_size
    _, _, rgb, depth, ids = self.p.getCameraImage(
        s, s, self.view, self.proj, renderer=self.p.ER_TINY_RENDERER,
        shadow=int(self.spec.shadows), lightDirection=[0.6, -0.4, 1.0])
    ids = np.asarray(ids, np.int64).reshape(s, s)
    ids = np.where(ids >= 0, ids & ((1 << 24) - 1), -2)
    out_ids = np.zeros((s, s), np.int64)
    out_ids[ids == self.arm] = -1
    for i, b in enumerate(self.bodies):
      out_ids[ids == b] = i + 1
    return {"image": np.asarray(rgb, np.uint8).reshape(s, s, 4)[..., :3],
            "points": unproject(np.asarray(depth, np.float64).reshape(s, s),
                                self.view, self.proj),
            "ids": out_ids}

  # -------------------------------------------------------------- motion
  def drive(self, q) -> None:
    p2d.drive(self.p, self.arm, q)

  def _tip(self) -> np.ndarray:
    return np.array(self.p.getLinkState(self.arm, p2d.EE_LINK)[4])

  def move_to(self, xyz) -> None:
    """The gripper tip along a straight segment to ``xyz`` (IK + position
    control at ``speed``), then a short hold."""
    start, end = self._tip(), np.asarray(xyz, np.float64)
    steps = max(2, int(np.linalg.norm(end - start) / self.spec.speed
                       * self.spec.sim_hz))
    for k in range(1, steps + 1):
      u = k / steps
      self.q = p2d.ik(self.p, self.arm, (1 - u) * start + u * end,
                       self.down)
      self.drive(self.q)
      self.p.stepSimulation()
    self.settle(24)

  def _body_at(self, xyz: np.ndarray, radius: float = 0.06) -> int | None:
    """The object whose centre of mass is nearest ``xyz`` (XY) within
    ``radius``, or None (a grasp at the perceived position)."""
    pos = self.positions()
    d = np.linalg.norm(pos[:, :2] - xyz[None, :2], axis=-1)
    i = int(np.argmin(d))
    return self.bodies[i] if d[i] <= radius else None

  def execute(self, move: Move) -> bool:
    """One pick-and-place; False when nothing was there to grasp."""
    top_table = p2d.TABLE_TOP
    carry = top_table + self.spec.carry_height
    src = np.asarray(move.source, np.float64)
    dst = np.asarray(move.target, np.float64)
    self.move_to([src[0], src[1], carry])
    self.move_to([src[0], src[1], move.source_top + 0.005])
    body = self._body_at(src)
    if body is None:
      self.move_to([src[0], src[1], carry])
      return False
    p = self.p
    tip = p.getLinkState(self.arm, p2d.EE_LINK)
    pos, orn = p.getBasePositionAndOrientation(body)
    inv_pos, inv_orn = p.invertTransform(tip[4], tip[5])
    rel_pos, rel_orn = p.multiplyTransforms(inv_pos, inv_orn, pos, orn)
    grasp = p.createConstraint(self.arm, p2d.EE_LINK, body, -1,
                               p.JOINT_FIXED, [0, 0, 0], rel_pos, [0, 0, 0],
                               rel_orn)
    p.changeConstraint(grasp, maxForce=500)
    self.move_to([src[0], src[1], carry])
    self.move_to([dst[0], dst[1], carry])
    self.move_to([dst[0], dst[1], move.target_top + 0.01])
    p.removeConstraint(grasp)
    self.settle(24)
    self.move_to([dst[0], dst[1], carry])
    return True


def scenario_layout(spec: TaskSpec, index: int, which: str
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Table positions ``[n, 2]`` and yaws ``[n]`` of scenario ``index``'s
  ``which`` ("goal" or "start") layout: uniform in the workspace, at least
  ``clearance`` apart; a pure function of (seed, n, index, which)."""
  n = len(spec.group)
  rng = np.random.default_rng([_TASK_STREAM, spec.seed, n, int(index),
                               {"goal": 0, "start": 1}[which]])
  (x0, x1), (y0, y1) = spec.workspace_x, spec.workspace_y
  for _ in range(1000):
    pts = np.stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)], -1)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(n)
    if n < 2 or d.min() > spec.clearance:
      return pts, rng.uniform(0, 2 * np.pi, n)
  raise RuntimeError(f"Could not place {n} objects {spec.clearance} m apart "
                     f"in workspace_x x workspace_y.")


def final_distances(final: np.ndarray, goal: np.ndarray) -> np.ndarray:
  """Per object: the distance (metres) between its final and goal centres
  of mass, or `OFF_TABLE_PENALTY` when it fell off the table."""
  table = p2d.TABLE_TOP
  off = ((final[:, 2] < table - 0.05) | (final[:, 0] < -0.251)
         | (final[:, 0] > 1.251) | (np.abs(final[:, 1]) > 0.501))
  return np.where(off, OFF_TABLE_PENALTY,
                  np.linalg.norm(final - goal, axis=-1))


def run_scenario(spec: TaskSpec, index: int, perceive) -> dict[str, Any]:
  """One scenario: the goal scene, then the start scene, each parsed by
  ``perceive(render) -> list[Detection]``; matched, planned, executed.
  Returns the per-object distances and what happened."""
  scene = Scene(spec)
  try:
    goal_xy, goal_yaw = scenario_layout(spec, index, "goal")
    scene.spawn(goal_xy, goal_yaw)
    scene.settle()
    goal_view = scene.render()
    goal_pos = scene.positions()
    start_xy, start_yaw = scenario_layout(spec, index, "start")
    scene.place(start_xy, start_yaw)
    scene.settle()
    start_view = scene.render()
    start_pos = scene.positions()
    goal = perceive(goal_view)
    current = perceive(start_view)
    pairs = match(current, goal)
    moves = plan(current, goal, pairs, spec)
    grasped = [scene.execute(m) for m in moves]
    scene.home()
    scene.settle()
    final = scene.positions()
  finally:
    scene.close()
  return {"distances": final_distances(final, goal_pos),
          "start_distances": final_distances(start_pos, goal_pos),
          "detected_goal": len(goal), "detected_start": len(current),
          "matched": len(pairs), "moves": len(moves),
          "parked": sum(m.parking for m in moves),
          "missed_grasps": int(np.sum(~np.asarray(grasped, bool)))
                           if grasped else 0,
          "goal_image": goal_view["image"],
          "start_image": start_view["image"]}


def oracle_perception(view: dict[str, np.ndarray]) -> list[Detection]:
  """Ground-truth masks and identities (the policy's upper bound)."""
  ids = view["ids"]
  apps = {int(k): np.eye(16)[int(k)] for k in np.unique(ids) if k > 0}
  return object_states(ids, view["points"], apps)
