"""Device mesh, shardings and multi-host input.

One 1-D mesh with a ``data`` axis over every device of every process: the
batch is split along it, the train state is replicated. The same code runs on
one CPU, 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), a GPU node or a TPU
pod.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ocjax.train import writers

DATA_AXIS = "data"


def initialize_distributed(config=None) -> None:
  """``jax.distributed.initialize`` once, from ``config.mesh`` if given.

  Empty fields are left to JAX's cluster detection (SLURM, Open MPI,
  Kubernetes, Cloud TPU).
  """
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if config is not None:
    if config.coordinator_address:
      kwargs["coordinator_address"] = config.coordinator_address
    if config.num_processes > 0:
      kwargs["num_processes"] = config.num_processes
    if config.process_id >= 0:
      kwargs["process_id"] = config.process_id
  jax.distributed.initialize(**kwargs)


def use_cpu_devices(count: int) -> bool:
  """Splits this host's CPU into ``count`` XLA devices (JAX's
  ``jax_num_cpu_devices``), so the batch is sharded over them; each runs on
  its own thread (on the 2-core development machine, 2 devices trained the
  demo's 32x32 Slot Attention about 1.5x faster than one). Only before JAX's backends start
  (the first ``jax.devices()``); after that, or with ``count <= 0`` or a
  device count already in ``XLA_FLAGS``, nothing changes. On GPUs and TPUs
  only the (unused) CPU backend changes. True if the count was set."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if count <= 0 or "xla_force_host_platform_device_count" in os.environ.get(
      "XLA_FLAGS", ""):
    return False
  if xla_bridge.backends_are_initialized():
    if jax.default_backend() == "cpu" and jax.device_count() != count:
      writers.log("mesh.cpu_devices=%d not applied: JAX already runs on %d "
                  "CPU device(s) in this process.", count, jax.device_count())
    return False
  jax.config.update("jax_num_cpu_devices", int(count))
  return True


def make_mesh(devices=None) -> Mesh:
  """A ``("data",)`` mesh over all (or the given) devices.

  The axis is ``Auto`` (jax 0.10's `jax.make_mesh` defaults to ``Explicit``,
  which would demand sharding annotations everywhere).
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def to_global(local_batch: Any, sharding: NamedSharding):
  """This process's rows -> global arrays sharded along the batch axis.

  With a replicated ``sharding`` every process passes the whole array.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def process_allgather(x):
  """``x`` of every process, stacked (a host-level collective)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x))
