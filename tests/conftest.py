"""Shared test set-up: the run's XLA compilation cache, where the reference
fixtures live, and jitted model calls."""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]

# Compilations of at least this many seconds go to the run's XLA cache.
_CACHE_MIN_COMPILE_SECS = "0.5"


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole test run.

  Many tests build a fresh jitted step for the same computation (a trainer
  resumed after a kill, the same model in its unit, contract and CLI tests);
  JAX's in-memory cache is keyed by the Python function and misses, the
  persistent cache is keyed by the compiled program and hits. The folder is
  new for each run (a fresh clone's CI starts cold) and is inherited through
  the environment by the subprocesses the tests start. Set
  ``JAX_COMPILATION_CACHE_DIR`` to keep one across runs, or to an empty
  string to compile everything.
  """
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    path = tempfile.mkdtemp(prefix="ocjax-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    config.ocjax_xla_cache = path
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                        _CACHE_MIN_COMPILE_SECS)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  import jax  # pylint: disable=g-import-not-at-top
  # jax reads these variables when imported; it may have been already.
  jax.config.update("jax_compilation_cache_dir",
                    os.environ["JAX_COMPILATION_CACHE_DIR"] or None)
  jax.config.update(
      "jax_persistent_cache_min_compile_time_secs",
      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update(
      "jax_persistent_cache_min_entry_size_bytes",
      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  path = getattr(config, "ocjax_xla_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


def fixtures_dir() -> pathlib.Path | None:
  """``$OCJAX_FIXTURES``, else ``../shared/fixtures`` beside the checkout.

  CI clones the repository elsewhere, so the workplace's shared folder is
  tried last.
  """
  candidates = [os.environ.get("OCJAX_FIXTURES"),
                _REPO.parent / "shared" / "fixtures",
                "/work/shared/fixtures"]
  for c in candidates:
    if c and pathlib.Path(c).is_dir():
      return pathlib.Path(c)
  return None


def load_fixture(relpath: str) -> dict[str, np.ndarray]:
  """Loads an ``.npz`` reference fixture, or skips the test with the reason.

  Under CI (``CI`` set to a true value) a missing fixture fails the test:
  parity must never pass by skipping.
  """
  root = fixtures_dir()
  path = root / relpath if root else None
  if path is None or not path.exists():
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
      pytest.fail(f"reference fixture {relpath} not found under CI (looked "
                  f"in $OCJAX_FIXTURES, ../shared/fixtures beside the "
                  "checkout and /work/shared/fixtures)")
    pytest.skip(f"reference fixture {relpath} not found (set OCJAX_FIXTURES "
                "to the folder holding genesis_v2_reference/)")
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def genesis_v2_reference():
  return load_fixture("genesis_v2_reference/objects_room_k7.npz")


def jitted(method, **static):
  """``method`` (a model's ``init`` or ``apply``) as one jitted program, with
  ``static`` its Python keywords (``train``, ``step``).

  Run eagerly, a model's thousands of small ops are dispatched, and many
  compiled, one by one (APEX's tiny gradient test: 82 s eagerly, 47 s jitted,
  compilation included, in two runs on 2 cores).
  """
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(functools.partial(method, **static))
