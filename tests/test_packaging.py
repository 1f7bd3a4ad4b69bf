"""The package as users install it: declared ranges, extras, console scripts."""

from __future__ import annotations

import importlib
import pathlib
import re
import tomllib

from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]


def _project():
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _pins() -> dict[str, str]:
  pins = {}
  for line in (REPO / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = re.split(r"==", line)
      pins[name.lower()] = version
  return pins


def test_every_pin_lies_in_its_declared_range():
  """requirements.txt is what the tests run with; the ranges must admit it."""
  project = _project()
  declared = [Requirement(r) for r in project["dependencies"]]
  for extra in ("test", "video", "sim"):
    declared += [Requirement(r) for r in
                 project["optional-dependencies"][extra]]
  pins = _pins()
  for req in declared:
    name = req.name.lower()
    assert name in pins, f"{name} is declared but not pinned"
    assert req.specifier.contains(pins[name]), (name, pins[name],
                                                str(req.specifier))
  # Nothing pinned that nothing declares (jaxlib comes with jax).
  names = {r.name.lower() for r in declared} | {"jaxlib"}
  assert set(pins) <= names, set(pins) - names


def test_console_scripts_resolve():
  scripts = _project()["scripts"]
  assert {"ocjax-train", "ocjax-eval", "ocjax-segment",
          "ocjax-compare"} <= set(scripts)
  for name, target in scripts.items():
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func)), name


def test_chex_and_tfds_are_not_runtime_dependencies():
  runtime = {Requirement(r).name for r in _project()["dependencies"]}
  assert "chex" not in runtime and "tensorflow-datasets" not in runtime
  for path in list((REPO / "ocjax").rglob("*.py")) + list(
      (REPO / "data_pipelines").rglob("*.py")):
    text = path.read_text()
    assert "import chex" not in text, path
    assert "tensorflow_datasets" not in text, path
