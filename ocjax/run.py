"""The run layer: config -> model, objective, optimizer, state; restore a run.

Training (`ocjax.train.loop`), evaluation, sampling, FID (`ocjax.eval`) and
`ocjax.segment` are siblings over this module; none imports another.

    run = run_lib.build(config)            # model, objective, optimizer
    state = run.init_state(mesh)           # or run.restore(workdir, step)
    out = run.apply_fn("eval", "fixed")(state.variables(), batch)

    run, state = run_lib.restore(workdir)  # a trained run, from its config.json

`Run` knows the model only through the protocol of `ocjax.models.base`: its
rng streams (keys folded per purpose), evaluation modes, mutable collections
and input shapes. ``config.json`` in a workdir records the whole config,
including ``experiment`` (the experiment file and preset that made it), so
evaluation, sampling and segmentation of a run need no ``--config``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from ocjax import models
from ocjax import objectives
from ocjax import xla_flags
from ocjax.models import base
from ocjax.train import checkpoint as ckpt_lib
from ocjax.train import mesh as mesh_lib
from ocjax.train import optimizer as optimizer_lib
from ocjax.train import step as step_lib

# Batch entries that are ground truth or bookkeeping, never model inputs.
NON_INPUT_KEYS = ("segmentation", "valid")
# Config sections that define a run; the others (train length, logging,
# evaluation, sampling, mesh) may change when a run is resumed or evaluated.
RUN_SECTIONS = ("model", "data", "objective", "seed")
# Sections an evaluation of an existing run may override.
EVAL_SECTIONS = ("eval", "sample", "mesh")
CONFIG_FILE = "config.json"


class ConfigError(ValueError):
  """A config field has a value the run cannot use (the field is named)."""


class ConfigMismatchError(ConfigError):
  """A config does not describe the run already in a workdir."""


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The entries of a data batch that the model reads."""
  return {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """A model, its objective and optimizer, built from one config."""
  config: Any
  model: base.ObjectCentricModel
  objective: Any
  tx: Any

  # ----------------------------------------------------------------- model
  @property
  def seed(self) -> int:
    return int(self.config.seed)

  def rngs(self, key) -> dict[str, jax.Array]:
    """One key per rng stream the model declares."""
    return step_lib.stream_rngs(key, self.model.rng_streams)

  def dummy_batch(self, size: int = 1) -> dict[str, np.ndarray]:
    """Zeros shaped like the model's inputs (no dataset needed)."""
    return self.model.dummy_batch(size)

  def eval_modes(self) -> dict[str, Mapping[str, Any]]:
    """The evaluation modes to run: ``config.eval.modes`` (empty: all the
    model declares), each with its keyword arguments."""
    declared = dict(self.model.eval_modes)
    wanted = tuple(self.config.get("eval", {}).get("modes", ()) or ())
    unknown = [m for m in wanted if m not in declared]
    if unknown:
      raise ConfigError(
          f"eval.modes {list(wanted)} names {unknown}, which model "
          f"{self.config.model.name!r} does not have; it has "
          f"{list(declared)}.")
    return {m: declared[m] for m in (wanted or declared)}

  def learning_rate(self, step: int) -> float:
    lr = optimizer_lib.learning_rate_schedule(
        self.config.optimizer, int(self.config.train.num_steps))
    return float(lr(step)) if callable(lr) else float(lr)

  # ----------------------------------------------------------------- state
  def _init_fn(self):
    batch = self.dummy_batch(1)

    def init():
      variables = step_lib.init_variables(self.model, batch, self.seed)
      return step_lib.create_state(variables, self.tx, self.objective)

    return init

  def init_state(self, mesh=None) -> step_lib.TrainState:
    """A fresh train state, replicated over ``mesh``."""
    mesh = mesh or mesh_lib.make_mesh()
    return jax.jit(self._init_fn(),
                   out_shardings=mesh_lib.replicated(mesh))()

  def abstract_state(self, mesh=None):
    """Shapes, dtypes and (replicated) shardings of the train state."""
    mesh = mesh or mesh_lib.make_mesh()
    return ckpt_lib.abstract_like(jax.eval_shape(self._init_fn()),
                                  mesh_lib.replicated(mesh))

  def checkpointer(self, workdir: str, *, read_only: bool = False):
    tc = self.config.train
    return ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep_every=tc.keep_every,
        max_to_keep=tc.max_to_keep, read_only=read_only)

  def restore(self, checkpointer, *, step: int | None = None, mesh=None,
              require: bool = True):
    """``(state, meta)`` of a checkpoint (default: the newest).

    Without a checkpoint: an error if ``require``, else a fresh state and
    ``meta = None``.
    """
    if checkpointer.latest_step() is None and not require:
      return self.init_state(mesh), None
    state, meta = checkpointer.restore(self.abstract_state(mesh), step)
    name = str(self.config.model.name)
    if meta.get("model") not in (None, name):
      raise ckpt_lib.CheckpointError(
          f"The checkpoint in {checkpointer.directory} is of model "
          f"{meta.get('model')!r}, not {name!r}.")
    return state, meta

  # ----------------------------------------------------------------- apply
  def jit(self, fn=None, **kwargs):
    """``jax.jit`` with the model's compiler options
    (`ocjax.xla_flags.model_options`): use it for every top-level function
    that calls the model (XLA takes compiler options only at the top: inside
    it call `model_fn`, not the jitted `apply_fn`). Also a decorator:
    ``@run.jit`` or ``@run.jit(static_argnames=...)``."""
    if fn is None:
      return functools.partial(self.jit, **kwargs)
    return jax.jit(fn, compiler_options=xla_flags.model_options(self.model),
                   **kwargs)

  def model_fn(self, purpose: str = "eval", mode: str | None = None):
    """``(variables, batch) -> ModelOutput`` in evaluation mode ``mode``
    (default: the model's first), with the keys of ``purpose``; not jitted
    (for functions compiled with `jit`)."""
    modes = dict(self.model.eval_modes)
    mode = mode or next(iter(modes))
    if mode not in modes:
      raise ValueError(f"Model {self.config.model.name!r} has no evaluation "
                       f"mode {mode!r}; it has {list(modes)}.")
    kwargs = dict(modes[mode])
    key = step_lib.purpose_key(self.seed, purpose)
    model, rngs = self.model, self.rngs(key)

    def apply(variables, batch):
      return model.apply(variables, batch, rngs=rngs, train=False, **kwargs)

    return apply

  @functools.lru_cache(maxsize=32)
  def apply_fn(self, purpose: str = "eval", mode: str | None = None):
    """`model_fn` jitted (with the model's compiler options)."""
    return self.jit(self.model_fn(purpose, mode))

  @functools.lru_cache(maxsize=8)
  def sample_fn(self, num: int, seed: int | None = None):
    """Jitted ``(variables, index) -> SampleOutput``: ``num`` scenes from the
    prior; batch ``index`` folds into the sampling key (deterministic)."""
    if not base.can_sample(self.model):
      raise ValueError(
          f"Model {self.config.model.name!r} has no prior to sample.")
    root = step_lib.purpose_key(self.seed if seed is None else seed,
                                "sample")
    model = self.model

    @self.jit
    def sample(variables, index=None):
      key = root if index is None else jax.random.fold_in(root, index)
      return model.apply(variables, num, method=type(model).sample,
                         rngs=self.rngs(key))

    return sample


def profile_window(train_config) -> tuple[int, int] | None:
  """``train.profile_steps`` ("N" or "FIRST-LAST", 1-based training steps)
  as ``(first, last)``, or None when empty."""
  spec = str(train_config.get("profile_steps", "") or "").strip()
  if not spec:
    return None
  try:
    first, _, last = spec.partition("-")
    window = int(first), int(last or first)
  except ValueError:
    window = (0, 0)
  if not 1 <= window[0] <= window[1]:
    raise ConfigError(
        f"config.train.profile_steps={spec!r} is invalid; expected a step "
        "'N' or a range 'FIRST-LAST' of training steps (1-based), e.g. "
        "'100-104'.")
  return window


def validate(config) -> Run:
  """Checks a config before anything is written; returns its `Run`.

  Every training, evaluation and optimizer number that must be positive is
  checked with the field named, and the model is built and initialised
  abstractly (no computation), so a model setting it does not support (a
  slot count, an image size) fails here, naming the field where the model
  does.
  """
  tc, oc = config.train, config.optimizer
  checks = [("train.num_steps", tc.num_steps, 1),
            ("train.batch_size", tc.batch_size, 1),
            ("train.grad_accum_steps", tc.grad_accum_steps, 0),
            ("train.log_every", tc.log_every, 1),
            ("train.image_every", tc.image_every, 1),
            ("train.checkpoint_every", tc.checkpoint_every, 1),
            ("train.max_to_keep", tc.max_to_keep, 1),
            ("train.keep_every", tc.keep_every, 0),
            ("train.eval_every", tc.eval_every, 0),
            ("eval.batch_size", config.eval.batch_size, 1),
            ("sample.num", config.sample.num, 1)]
  for name, value, minimum in checks:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < minimum):
      raise ConfigError(f"config.{name}={value!r} is invalid; expected an "
                       f"int >= {minimum}.")
  if not float(oc.learning_rate) > 0:
    raise ConfigError(f"config.optimizer.learning_rate={oc.learning_rate!r} "
                     "is invalid; expected a positive number.")
  if float(tc.get("time_budget_s", 0) or 0) < 0:
    raise ConfigError(f"config.train.time_budget_s={tc.time_budget_s!r} is "
                     "invalid; expected >= 0 (0: no limit).")
  if not float(tc.get("cache_inputs_max_gb", 16.0)) >= 0:
    raise ConfigError(
        f"config.train.cache_inputs_max_gb={tc.cache_inputs_max_gb!r} is "
        "invalid; expected a number of GiB >= 0.")
  profile_window(tc)  # Raises a ConfigError naming the field.
  mode = tc.get("wandb_mode", "online")
  if mode not in ("online", "offline"):
    raise ConfigError(f"config.train.wandb_mode={mode!r} is invalid; "
                      "expected 'online' or 'offline'.")
  if tc.get("wandb_project", ""):
    try:
      import wandb  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise ConfigError(
          f"config.train.wandb_project={tc.wandb_project!r} asks for Weights "
          "& Biases, which is not installed: pip install wandb (or leave "
          "train.wandb_project empty).") from None
  if tc.grad_accum_steps and tc.batch_size % tc.grad_accum_steps:
    raise ConfigError(
        f"config.train.batch_size={tc.batch_size} must divide by "
        f"config.train.grad_accum_steps={tc.grad_accum_steps}.")
  try:
    run = build(config)
    jax.eval_shape(run._init_fn())  # pylint: disable=protected-access
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.model ({config.model.name}) cannot be built: "
                     f"{e}") from e
  return run


def build(config) -> Run:
  """Model, objective and optimizer of an experiment config."""
  model = models.build(config.model)
  objective = objectives.build(config.objective)
  tx = optimizer_lib.make_optimizer(config.optimizer,
                                    int(config.train.num_steps))
  return Run(config=config, model=model, objective=objective, tx=tx)


# ----------------------------------------------------------------- workdir
def _config_tree(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       sections: Iterable[str] = RUN_SECTIONS) -> list[str]:
  """``section.field: saved -> current`` for every field that differs."""
  diffs = []
  for section in sections:
    a, b = saved.get(section), current.get(section)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += [f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    else:
      diffs.append(f"{section}: {a!r} -> {b!r}")
  return diffs


def read_config_json(workdir: str) -> dict[str, Any]:
  """The JSON tree of ``workdir/config.json``, with a clear error."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No {path}: --workdir must be a run directory written by "
        "`python -m ocjax.main --mode=train` (it holds config.json and "
        "checkpoints/).")
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"Cannot read the run config {path}: {e}") from e
  if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
    raise ConfigError(f"{path} has no 'model' section; it is not an ocjax "
                      "run config.")
  for section in ("data", "seed"):
    if section not in raw:
      raise ConfigError(f"{path} has no {section!r} section; it is not an "
                        "ocjax run config.")
  return raw


def check_workdir_config(config, workdir: str) -> None:
  """Writes ``config.json``; refuses to resume a run of another setup.

  Fields of ``model``, ``data``, ``objective`` and ``seed`` must match the run
  already in ``workdir`` (training length, logging and evaluation may
  change).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = _config_tree(config)
  if os.path.exists(path):
    diffs = config_differences(read_config_json(workdir), current)
    if diffs:
      raise ConfigMismatchError(
          f"{workdir} holds a run with a different configuration "
          f"({'; '.join(diffs)}). Use a new --workdir, or restore the "
          "original settings to resume it.")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _merge(defaults: Any, saved: Any) -> Any:
  """``saved`` over ``defaults`` (JSON trees); a section naming another
  ``name`` (e.g. another dataset) replaces the default one whole."""
  if not (isinstance(defaults, dict) and isinstance(saved, dict)):
    return saved
  if "name" in saved and defaults.get("name", saved["name"]) != saved["name"]:
    return saved
  out = dict(defaults)
  for k, v in saved.items():
    out[k] = _merge(defaults.get(k), v)
  return out


def load_experiment(spec: str):
  """``get_config`` of ``"experiments/<file>.py[:arg]"`` -> (config, arg).

  The file is looked up as given, then beside this package (the checkout's
  ``experiments/``), then as the installed ``experiments`` package.
  """
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for candidate in (path, os.path.join(repo, "experiments", f"{name}.py")):
    if candidate and os.path.isfile(candidate):
      mod_spec = importlib.util.spec_from_file_location(
          f"_ocjax_experiment_{name}", candidate)
      module = importlib.util.module_from_spec(mod_spec)
      mod_spec.loader.exec_module(module)
      break
  else:
    module = importlib.import_module(f"experiments.{name}")
  return module.get_config(arg or None)


def _experiment_defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
  """The JSON tree of the config that made the run (its ``experiment``, or
  ``experiments/<model name>.py``); {} where it cannot be built."""
  spec = raw.get("experiment") or f"experiments/{raw['model'].get('name')}.py"
  try:
    return _config_tree(load_experiment(str(spec)))
  except Exception:  # pylint: disable=broad-except
    return {}


def config_from_workdir(workdir: str, config=None):
  """The locked config of the run in ``workdir`` (its ``config.json``).

  Fields added to the experiment since the run was written take their
  default values there. With ``config`` (e.g. from ``--config``), its
  ``eval``, ``sample`` and ``mesh`` sections are used, and it must describe
  the same run (model, data, objective, seed): anything else is refused
  with the fields that differ, so results of one run are never overwritten
  with another's.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  raw = read_config_json(workdir)
  merged = _merge(_experiment_defaults(raw), raw)
  if config is not None:
    current = _config_tree(config)
    diffs = config_differences(merged, current)
    if diffs:
      raise ConfigMismatchError(
          f"The run in {workdir} was trained with another configuration "
          f"({'; '.join(diffs)}). Evaluation and sampling use the run's own "
          f"config.json; only the sections {list(EVAL_SECTIONS)} may be "
          "overridden.")
    for section in EVAL_SECTIONS:
      if section in current:
        merged[section] = current[section]

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  result = ml_collections.ConfigDict(tuples(merged))
  result.lock()
  return result


def restore(workdir: str, step: int | None = None, *, config=None,
            mesh=None, with_meta: bool = False):
  """The run in ``workdir`` and the state of checkpoint ``step`` (latest):
  ``(run, state)``, or ``(run, state, meta)`` with ``with_meta`` (the
  checkpoint's metadata: ``train_seconds``, ``data_position``, ...).

  ``config`` optionally overrides the evaluation sections (see
  `config_from_workdir`).
  """
  config = config_from_workdir(workdir, config)
  run = build(config)
  checkpointer = run.checkpointer(workdir, read_only=True)
  try:
    state, meta = run.restore(checkpointer,
                              step=None if step is None or step < 0 else step,
                              mesh=mesh)
  finally:
    checkpointer.close()
  return (run, state, meta) if with_meta else (run, state)
