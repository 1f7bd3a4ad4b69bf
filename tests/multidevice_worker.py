"""Runs in subprocesses of tests/test_multidevice.py (fake CPU devices).

    python tests/multidevice_worker.py devices OUT.json
        one process, 8 devices: the same two steps on a 1-device and an
        8-device mesh; writes losses and parameter differences.
    python tests/multidevice_worker.py train WORKDIR [PROCESS_ID PORT]
        `loop.train` of the tiny config, 2 steps of batch 8; with a process
        id, one of two processes joined through jax.distributed on PORT.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import data_pipelines  # noqa: E402
from ocjax import run as run_lib  # noqa: E402
from ocjax.train import loop  # noqa: E402
from ocjax.train import mesh as mesh_lib  # noqa: E402
from ocjax.train import step as step_lib  # noqa: E402
import test_train  # noqa: E402


# Plain SGD: the update is linear in the gradient, so 1 vs 8 devices (whose
# gradient sums differ only in reduction order) agree to rounding error.
# Adam would turn rounding noise in a near-zero gradient into a full step.
LEARNING_RATE = 1e-5


def config(num_steps=2):
  c = test_train.tiny_config(num_steps, **{"train.batch_size": 8,
                                           "eval.batch_size": 8,
                                           "optimizer.name": "sgd",
                                           "optimizer.learning_rate":
                                               LEARNING_RATE})
  return c


def update_rel_diff(after_a, after_b, before):
  """Relative difference of two parameter updates Δ = after - before.

  Returns (global, per_leaf_max): ‖Δa - Δb‖ / ‖Δb‖ over all parameters, and
  the largest such ratio of a single leaf (Frobenius norms, float64).
  """
  def sq(a, b, p):
    a, b, p = (np.asarray(x, np.float64) for x in (a, b, p))
    return np.sum(((a - p) - (b - p)) ** 2), np.sum((b - p) ** 2)
  pairs = jax.tree.leaves(jax.tree.map(sq, after_a, after_b, before),
                          is_leaf=lambda x: isinstance(x, tuple))
  num = sum(n for n, _ in pairs)
  den = sum(d for _, d in pairs)
  per_leaf = max(float(np.sqrt(n / max(d, 1e-60))) for n, d in pairs)
  return float(np.sqrt(num / den)), per_leaf


def devices(out_path):
  c = config()
  run = run_lib.build(c)
  model, objective, tx = run.model, run.objective, run.tx
  ds = data_pipelines.get_dataset(c.data, "train", batch_size=8, seed=c.seed,
                                  process_index=0, process_count=1)
  it = data_pipelines.iterate(ds)
  batches = [run_lib.model_inputs(next(it)) for _ in range(2)]
  results = {}
  params0 = jax.device_get(run.init_state(mesh_lib.make_mesh(
      jax.devices()[:1])).params)
  for n in (1, 8):
    mesh = mesh_lib.make_mesh(jax.devices()[:n])
    state = run.init_state(mesh)
    train_step = step_lib.make_train_step(
        model, objective, tx, seed=c.seed,
        state_sharding=mesh_lib.replicated(mesh),
        batch_sharding=mesh_lib.batch_sharding(mesh))
    losses = []
    for b in batches:
      state, m = train_step(state,
                            mesh_lib.to_global(b, mesh_lib.batch_sharding(mesh)))
      losses.append(float(m["loss"]))
    results[n] = (losses, jax.device_get(state))
  with open(out_path, "w") as f:
    json.dump({"num_devices": len(jax.devices()),
               "losses_1": results[1][0], "losses_8": results[8][0],
               "update_rel_diff": update_rel_diff(
                   results[8][1].params, results[1][1].params, params0),
               "beta_1": float(results[1][1].objective_state.beta),
               "beta_8": float(results[8][1].objective_state.beta)}, f)


def train(workdir, process_id=None, port=None):
  c = config()
  if process_id is not None:
    with c.unlocked():
      c.mesh.distributed = True
      c.mesh.coordinator_address = f"127.0.0.1:{port}"
      c.mesh.num_processes = 2
      c.mesh.process_id = int(process_id)
  loop.train(c, workdir)
  print(json.dumps({"process": jax.process_index(),
                    "processes": jax.process_count(),
                    "devices": jax.device_count()}))


if __name__ == "__main__":
  if sys.argv[1] == "devices":
    devices(sys.argv[2])
  else:
    train(*sys.argv[2:])
