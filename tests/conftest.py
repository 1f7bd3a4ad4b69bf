"""Shared test helpers: where the reference fixtures live."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]


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
