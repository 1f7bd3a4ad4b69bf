"""The object-arrangement task (APEX Sec. IV-C): perception geometry,
matching, the occupancy-checking planner, the score, and the CLI with a
trained APEX run (resuming)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipelines import p2d_arrange as arrange

pytest.importorskip("pybullet")


def _det(app, xy, radius=0.04, top=0.7):
  return arrange.Detection(np.asarray(app, float),
                           np.array([xy[0], xy[1], 0.66]), top, radius, 50)


def test_depth_points_locate_each_object():
  spec = arrange.TaskSpec(group=arrange.DEFAULT_GROUP[:3], image_size=96)
  scene = arrange.Scene(spec)
  try:
    xy, yaw = arrange.scenario_layout(spec, 0, "goal")
    scene.spawn(xy, yaw)
    scene.settle()
    view = scene.render()
    com = scene.positions()
  finally:
    scene.close()
  dets = arrange.oracle_perception(view)
  assert len(dets) == 3
  for d in dets:
    i = int(np.argmax(d.appearance)) - 1
    # The visible surface's footprint centre is the object's (XY, 3 cm).
    assert np.linalg.norm(d.position[:2] - com[i, :2]) < 0.03
    assert d.top > com[i, 2]
    assert 0.01 < d.radius < 0.12
  # The table's points lie on its top (the background's depth).
  table = view["points"][view["ids"] == 0]
  near = table[(table[:, 0] > 0.3) & (table[:, 0] < 0.8)]
  assert abs(np.median(near[:, 2]) - 0.625) < 0.01


def test_unproject_inverts_the_camera():
  spec = arrange.TaskSpec()
  scene = arrange.Scene(spec)
  try:
    view, proj = scene.view, scene.proj
  finally:
    scene.close()
  pv = (np.asarray(proj).reshape(4, 4).T @ np.asarray(view).reshape(4, 4).T)
  world = np.array([[0.5, 0.1, 0.7], [0.6, -0.2, 0.63]])
  clip = np.concatenate([world, np.ones((2, 1))], 1) @ pv.T
  ndc = clip[:, :3] / clip[:, 3:]
  size = 200
  depth = np.zeros((size, size))
  cols = np.floor((ndc[:, 0] + 1) / 2 * size).astype(int)
  rows = np.floor((1 - ndc[:, 1]) / 2 * size).astype(int)
  depth[rows, cols] = (ndc[:, 2] + 1) / 2
  pts = arrange.unproject(depth, view, proj)[rows, cols]
  # Within half a pixel's footprint at about 1.2 m.
  np.testing.assert_allclose(pts, world, atol=6e-3)


def test_match_by_smallest_appearance_distance():
  goal = [_det([0, 0, 1], (0.5, 0)), _det([1, 0, 0], (0.6, 0)),
          _det([0, 1, 0], (0.7, 0))]
  current = [_det([0.9, 0.1, 0], (0.4, 0.2)),
             _det([0, 0.1, 0.95], (0.5, 0.2))]
  assert sorted(arrange.match(current, goal)) == [(0, 1), (1, 0)]
  assert arrange.match([], goal) == []


def test_planner_checks_occupancy_and_parks_when_all_targets_are_taken():
  spec = arrange.TaskSpec()
  a, b = (0.5, -0.1), (0.5, 0.1)
  current = [_det([1, 0], a), _det([0, 1], b)]
  goal = [_det([1, 0], b), _det([0, 1], a)]  # a swap: both targets taken
  moves = arrange.plan(current, goal, arrange.match(current, goal), spec)
  assert [m.parking for m in moves] == [True, False, False]
  parked = moves[0]
  assert abs(abs(parked.target[1]) - 0.42) < 1e-9  # at the table's edge
  # Afterwards each object was moved onto its own goal.
  assert {(m.item, tuple(m.target[:2])) for m in moves[1:]} == {
      (1, a), (0, b)}
  # A free target needs no parking; an object already in place still moves
  # (the policy is open loop).
  current = [_det([1, 0], (0.45, -0.2)), _det([0, 1], (0.7, 0.2))]
  goal = [_det([1, 0], (0.6, 0.0)), _det([0, 1], (0.5, 0.25))]
  moves = arrange.plan(current, goal, arrange.match(current, goal), spec)
  assert not any(m.parking for m in moves) and len(moves) == 2


def test_score_penalises_an_object_off_the_table():
  goal = np.array([[0.5, 0.0, 0.67], [0.6, 0.1, 0.67]])
  final = np.array([[0.5, 0.03, 0.67], [0.6, 0.1, 0.03]])  # on the floor
  np.testing.assert_allclose(arrange.final_distances(final, goal),
                             [0.03, arrange.OFF_TABLE_PENALTY])


def test_oracle_perception_arranges_two_objects():
  spec = arrange.TaskSpec(group=arrange.DEFAULT_GROUP[:2], image_size=96)
  r = arrange.run_scenario(spec, 1, arrange.oracle_perception)
  assert r["detected_goal"] == r["detected_start"] == r["matched"] == 2
  assert r["missed_grasps"] == 0
  assert np.mean(r["start_distances"]) > 0.1
  assert np.all(r["distances"] < 0.05), r["distances"]


@pytest.mark.slow
def test_cli_with_a_trained_apex_run_resumes(tmp_path, capsys):
  from ocjax import run as run_lib
  from ocjax.eval import arrangement
  from ocjax.train import loop
  config = run_lib.load_experiment("experiments/apex.py:tiny,smoke")
  with config.unlocked():
    config.experiment = "experiments/apex.py:tiny,smoke"
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  out = str(tmp_path / "arr")
  args = [f"--workdir={workdir}", f"--out={out}", "--objects=2",
          "--scenarios=2", "--frames=2"]
  assert arrangement.main(args) == 0
  res = json.load(open(os.path.join(out, "arrangement.json")))
  task = res["tasks"]["2"]
  assert task["scenarios"] == 2
  assert np.isfinite(task["mean"]) and 0 <= task["mean"] <= 1.0
  assert "| apex (step" in open(os.path.join(out, "arrangement.md")).read()
  log = os.path.join(out, "scenarios_2.jsonl")
  lines = open(log).read().splitlines()
  assert len(lines) == 2
  # A cut last line is redone; finished scenarios are not.
  with open(log, "w") as f:
    f.write(lines[0] + "\n" + lines[1][:20])
  assert arrangement.main(args + ["--scenarios=3"]) == 0
  recs = [json.loads(l) for l in open(log).read().splitlines()[::1]
          if l.endswith("}")]
  assert sorted(r["index"] for r in recs) == [0, 1, 2]
  assert json.load(open(os.path.join(out, "arrangement.json")))["tasks"][
      "2"]["scenarios"] == 3
  # Bad arguments name themselves.
  assert arrangement.main(["--perception=model", "--objects=5"]) == 2
  assert "--objects" in capsys.readouterr().err
