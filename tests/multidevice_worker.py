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
from ocjax.train import loop  # noqa: E402
from ocjax.train import mesh as mesh_lib  # noqa: E402
from ocjax.train import step as step_lib  # noqa: E402
import test_train  # noqa: E402


def config(num_steps=2):
  c = test_train.tiny_config(num_steps, **{"train.batch_size": 8,
                                           "eval.batch_size": 8})
  return c


def devices(out_path):
  c = config()
  model, objective, tx = loop.build(c)
  example = loop.example_batch(c)
  ds = data_pipelines.get_dataset(c.data, "train", batch_size=8, seed=c.seed,
                                  process_index=0, process_count=1)
  it = data_pipelines.iterate(ds)
  batches = [loop.model_inputs(next(it)) for _ in range(2)]
  results = {}
  for n in (1, 8):
    mesh = mesh_lib.make_mesh(jax.devices()[:n])
    params = step_lib.init_params(model, loop.model_inputs(example), c.seed)
    state = jax.device_put(step_lib.create_state(params, tx, objective),
                           mesh_lib.replicated(mesh))
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
  diffs = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64)
                                       - np.asarray(b, np.float64)))
                         / max(float(np.max(np.abs(b))), 1e-12)),
      results[8][1].params, results[1][1].params)
  with open(out_path, "w") as f:
    json.dump({"num_devices": len(jax.devices()),
               "losses_1": results[1][0], "losses_8": results[8][0],
               "max_param_rel_diff": max(jax.tree.leaves(diffs)),
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
