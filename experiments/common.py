"""Config sections every experiment shares, and the preset-argument parser.

An experiment file (``experiments/<model>.py``) builds its config as

    c = common.base_config(model=..., data=..., objective=...)

and then sets only what its paper says differently (optimizer, batch, steps,
evaluation). ``common.parse_arg`` reads ``file.py:preset,option,...``
strictly, and the options every experiment has (``smoke``, ``tiny``) are
applied by ``common.apply_shared_option``.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

# Options every experiment accepts after its preset.
SHARED_OPTIONS = ("smoke",)


def base_config(*, model: ml_collections.ConfigDict,
                data: ml_collections.ConfigDict,
                objective: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """The full (unlocked) config with the shared defaults."""
  c = ml_collections.ConfigDict()
  # The experiment file and preset that made the run ("file.py:preset"),
  # recorded by `ocjax.main` in the run's config.json.
  c.experiment = ""
  c.seed = 0
  c.data = data
  c.model = model
  c.objective = objective

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # "adam", "adam_keras" (TF's eps placement), "sgd"
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 0.0  # 0: off
  # "constant" or "warmup_decay" (see ocjax.train.optimizer).
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_power = 1.0  # 1: linear warm-up, 2: quadratic
  c.optimizer.decay_rate = 1.0  # lr * decay_rate ** (step / decay_steps)
  c.optimizer.decay_steps = 0  # 0: no exponential decay
  c.optimizer.late_decay_fraction = 0.0  # lr * late_decay_factor from there
  c.optimizer.late_decay_factor = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global
  c.train.num_steps = 500_000
  c.train.log_every = 100  # scalars + progress line
  c.train.image_every = 5_000  # TensorBoard images and PNG grids
  c.train.checkpoint_every = 1_000  # the "latest" checkpoint
  c.train.keep_every = 50_000  # periodic checkpoints kept besides it
  c.train.max_to_keep = 3  # periodic checkpoints kept
  c.train.eval_every = 0  # 0: no evaluation during training
  # Gradients of the batch computed as this many micro-batches (the same
  # step; faster on CPUs, less memory anywhere). 0: automatic, micro-batches
  # of 4 images per device on a CPU and none elsewhere (and none for models
  # with batch statistics).
  c.train.grad_accum_steps = 0
  # Compute the inputs a model's training stage derives from frozen
  # parameters (its cached_inputs, e.g. AST-Seg's phase-2 background) once
  # per training example, in <workdir>/input_cache, when the stage reads
  # more examples than the split has (ocjax.train.input_cache); at most
  # this many GiB on disk.
  c.train.cache_inputs = True
  c.train.cache_inputs_max_gb = 16.0
  # Stop (and checkpoint) after this many seconds of training; 0: no limit.
  # The same command continues the run.
  c.train.time_budget_s = 0.0
  # Trace these training steps with the JAX profiler into <workdir>/tb
  # (TensorBoard's Profile tab): "N" or "FIRST-LAST"; "": none.
  c.train.profile_steps = ""
  # Also log to Weights & Biases (pip install wandb): the project; "" = off.
  c.train.wandb_project = ""
  c.train.wandb_mode = "online"  # or "offline" (sync later: wandb sync)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.batch_size = 32
  c.eval.num_examples = 320  # 0: the whole split
  # Evaluation modes to score (names the model declares); empty: all.
  c.eval.modes = ()
  c.eval.step = -1  # checkpoint step to evaluate; -1: latest
  # Training from scratch first scores the untrained model the same way
  # (eval/untrained.json); evaluations print it beside their ARI-FG.
  c.eval.untrained_baseline = True

  c.sample = ml_collections.ConfigDict()
  c.sample.num = 64
  c.sample.step = -1

  c.mesh = ml_collections.ConfigDict()
  # On a CPU host, train and evaluate on this many XLA devices (threads), the
  # batch split over them (`ocjax.train.mesh.use_cpu_devices`); 0: JAX's
  # default, one. Ignored on GPUs and TPUs.
  c.mesh.cpu_devices = 0
  # Multi-host: call jax.distributed.initialize(). On SLURM, Open MPI,
  # Kubernetes and Cloud TPU the cluster is detected; elsewhere give the
  # coordinator's "host:port", the number of processes and this process's id.
  c.mesh.distributed = False
  c.mesh.coordinator_address = ""
  c.mesh.num_processes = 0  # 0: detected
  c.mesh.process_id = -1  # -1: detected
  return c


def parse_arg(arg: str | None, *, label: str, presets: Sequence[str],
              options: Sequence[str],
              default: str | None = None) -> tuple[str, list[str]]:
  """``"preset,option,..."`` -> (preset, options), strictly.

  Only options given: the first preset (or ``default``) is used.
  """
  default = default or presets[0]
  parts = [p.strip() for p in (arg or default).split(",") if p.strip()]
  allowed = tuple(options) + SHARED_OPTIONS
  if not parts or parts[0] in allowed:
    parts = [default] + parts
  preset, opts = parts[0], parts[1:]
  if preset not in presets:
    raise ValueError(f"Unknown {label} preset {preset!r}; expected one of "
                     f"{tuple(presets)}.")
  for o in opts:
    if o not in allowed:
      raise ValueError(f"Unknown {label} option {o!r}; expected any of "
                       f"{allowed}.")
  return preset, opts


def apply_shared_option(c: ml_collections.ConfigDict, option: str) -> bool:
  """Applies an option every experiment has; False if ``option`` is not one.

  ``smoke``: a few steps of a small batch, for tests.
  """
  if option == "smoke":
    c.train.batch_size = 4
    c.train.grad_accum_steps = 1
    c.train.eval_every = 0
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.image_every = 4
    c.train.checkpoint_every = 2
    c.train.keep_every = 4
    c.eval.num_examples = 8
    c.eval.batch_size = 4
    c.sample.num = 4
    return True
  return False


def apply_quick_schedule(c: ml_collections.ConfigDict, *,
                         grad_accum_steps: int) -> None:
  """The CPU quick presets' shared schedule: batch 8, 3,000 steps at learning
  rate 4e-4, an evaluation of 320 test images every 1,000 steps (the
  learning curve), figures every 500, checkpoints every 250."""
  c.train.batch_size = 8
  c.train.grad_accum_steps = grad_accum_steps
  c.train.num_steps = 3_000
  c.train.log_every = 100
  c.train.image_every = 500
  c.train.checkpoint_every = 250
  c.train.keep_every = 1_000
  c.train.eval_every = 1_000
  c.eval.num_examples = 320
  c.eval.batch_size = 32
  c.optimizer.learning_rate = 4e-4


def set_fields(c: ml_collections.ConfigDict, values: dict) -> None:
  """``{"model.num_slots": 3, ...}`` -> the config (for tests and presets)."""
  for key, value in values.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
