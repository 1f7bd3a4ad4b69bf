r"""FID of a run: prior samples against test images (paper 001's protocol).

    python -m ocjax.eval.fid --workdir=DIR --inception_weights=FILE \
        [--num=10000] [--batch_size=50] [--step=S]
    python -m ocjax.main --config=... --workdir=DIR --mode=fid \
        --inception_weights=FILE [--fid_num=10000]

``num`` scenes drawn from the model's prior and the first ``num`` images of
the test split go through the FID Inception-v3 (`ocjax.nn.inception`, weights
from the file the user names: `ocjax.convert.inception`); the Fréchet
distance of the Gaussian fits of their 2048-d pool features is the FID
(`ocjax.metrics.fid`). As the papers' code saves samples and images as PNG
files before scoring them, both are quantised to 8 bits first.

Sampling and feature extraction are batched and jit-compiled (one
compilation each); features are reduced to running statistics on the fly.
The test-set statistics are cached in ``DIR/eval/fid_stats_*.npz`` (keyed by
the data config, the number of images and the weights file's hash), so a
second run only samples. Writes ``DIR/eval/fid_<step>.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

import data_pipelines
from ocjax import run as run_lib
from ocjax.convert import inception as convert
from ocjax.metrics import fid as fid_lib
from ocjax.models import base
from ocjax.nn import inception
from ocjax.train import writers

DEFAULT_NUM = 10_000  # Paper 001: 10 000 samples vs 10 000 test images.
DEFAULT_BATCH = 50


class FIDError(ValueError):
  """FID cannot be computed as asked (weights, data or model)."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


@dataclasses.dataclass
class Extractor:
  """A jitted ``images [B, H, W, 3] in [0, 1] -> features [B, D]``."""
  module: Any
  variables: Any
  path: str = ""
  sha256: str = ""
  quantize: bool = True

  def __post_init__(self):
    quantize = self.quantize

    @jax.jit
    def features(variables, images):
      x = jnp.clip(images.astype(jnp.float32), 0.0, 1.0)
      if quantize:  # As PNG files: 8 bits per channel.
        x = jnp.round(x * 255.0) / 255.0
      return self.module.apply(variables, x)

    self._features = features

  @property
  def feature_dim(self) -> int:
    return inception.feature_dim(self.module.width_divisor)

  @property
  def weights_check(self) -> str:
    """"verified": pytorch-fid's file itself (by its hash); "unverified": a
    full-size network from another file (e.g. its .npz); "test": a narrowed
    extractor, whose FIDs are not comparable with published ones."""
    if self.module.width_divisor != 1:
      return "test"
    if self.sha256.startswith(convert.STANDARD_SHA256_PREFIX):
      return "verified"
    return "unverified"

  def __call__(self, images) -> np.ndarray:
    return np.asarray(self._features(self.variables, jnp.asarray(images)))


def load_extractor(path: str | None, **module_kwargs) -> Extractor:
  """The FID Inception-v3 with the weights in ``path``.

  Raises:
    FIDError: when no file is named (nothing is downloaded).
    convert.WeightsError: when the file is missing or of another network.
  """
  if not path:
    raise FIDError(
        "FID needs the Inception-v3 weights and ocjax downloads nothing: "
        f"pass --inception_weights=FILE naming pytorch-fid's "
        f"{convert.STANDARD_FILE} ({convert.RELEASE_URL}) or an .npz of its "
        "state dict (see docs/eval.md, 'FID').")
  module, variables = convert.load_fid_inception(path, **module_kwargs)
  variables = jax.device_put(variables)
  return Extractor(module, variables, path=os.path.abspath(path),
                   sha256=_sha256(path))


def statistics(batches: Iterator[np.ndarray], extractor: Extractor,
               num: int, *, progress: str = "") -> fid_lib.GaussianStats:
  """Gaussian statistics of the features of the first ``num`` images.

  Args:
    batches: ``[B, H, W, 3]`` arrays in [0, 1] (all of the same shape, so the
      extractor compiles once; the last one may be cut short here).
    extractor: the feature extractor.
    num: images to use.
    progress: a label for progress lines (none if empty).
  """
  stats = fid_lib.GaussianStats()
  t0 = time.monotonic()
  last = t0
  for images in batches:
    if stats.count >= num:
      break
    feats = extractor(images)[:num - stats.count]
    stats.update(feats)
    now = time.monotonic()
    if progress and (now - last > 30 or stats.count >= num):
      writers.log("FID %s: %d/%d images (%.1f images/s).", progress,
                  stats.count, num, stats.count / max(now - t0, 1e-9))
      last = now
  return stats


def dataset_batches(config, split: str, batch_size: int
                    ) -> Iterator[np.ndarray]:
  """Valid images of ``split`` in order, in batches of ``batch_size``.

  Padding rows of the last batch are dropped, so that batch may be smaller
  (one more compilation at most).
  """
  ds = data_pipelines.get_dataset(config.data, split, batch_size=batch_size,
                                  seed=config.seed, process_index=0,
                                  process_count=1, repeat=False)
  for batch in data_pipelines.iterate(ds):
    if "image" not in batch:
      raise FIDError(f"Dataset {config.data.name!r} yields "
                     f"{sorted(batch)}; FID needs 'image' batches.")
    images = np.asarray(batch["image"])
    valid = np.asarray(batch.get("valid", np.ones(len(images), bool)), bool)
    yield images if valid.all() else images[valid]


def make_sample_fn(run: run_lib.Run, seed: int | None, batch_size: int):
  """Jitted ``(variables, index) -> [batch_size, H, W, C]`` prior samples.

  Batch ``index`` folds ``index`` into the run's sampling key, so the ``N``
  samples are a deterministic function of the seed.
  """
  if not base.can_sample(run.model):
    raise FIDError(f"Model {run.config.model.name!r} has no prior to "
                   "sample; FID of samples needs one.")
  sample = run.sample_fn(batch_size, seed)
  return lambda variables, index: sample(variables, index).image


def sample_batches(sample_fn, variables) -> Iterator[np.ndarray]:
  index = 0
  while True:
    yield sample_fn(variables, jnp.int32(index))
    index += 1


def reference_statistics(
    config, extractor: Extractor, num: int, batch_size: int,
    cache_dir: str | None, split: str = "test"
) -> tuple[np.ndarray, np.ndarray, int, str | None]:
  """``(mu, sigma, count, cache_path)`` of the test images, cached.

  The cache file's name hashes the data config, the split, ``num``, the
  quantisation and the weights' hash; a different setting never reuses it.
  """
  available = data_pipelines.num_examples(config.data, split)
  num = min(num, available)
  key = json.dumps({"data": json.loads(config.data.to_json_best_effort()),
                    "split": split, "num": num, "seed": config.seed,
                    "weights": extractor.sha256,
                    "quantize": extractor.quantize}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  path = (os.path.join(cache_dir, f"fid_stats_{split}_{num}_{digest}.npz")
          if cache_dir else None)
  if path and os.path.exists(path):
    mu, sigma, count = fid_lib.load_stats(path)
    if mu.shape == (extractor.feature_dim,):
      writers.log("FID: test statistics from the cache %s.", path)
      return mu, sigma, count, path
  stats = statistics(dataset_batches(config, split, batch_size), extractor,
                     num, progress=f"{split} images")
  if stats.count < 2:
    raise FIDError(f"The {split} split of {config.data.name!r} gave "
                   f"{stats.count} images; FID needs at least 2.")
  if path and jax.process_index() == 0:
    stats.save(path, dataset=config.data.name, split=split,
               weights=extractor.path)
  return stats.mu, stats.sigma, stats.count, path


def fid_of_variables(run: run_lib.Run, variables, extractor: Extractor, *,
                  num: int = DEFAULT_NUM, batch_size: int = DEFAULT_BATCH,
                  seed: int | None = None, cache_dir: str | None = None,
                  split: str = "test") -> dict[str, Any]:
  """FID of ``num`` prior samples against ``num`` ``split`` images."""
  config = run.config
  if num < 2:
    raise FIDError(f"num={num}: FID needs at least 2 images per set.")
  t0 = time.monotonic()
  mu_t, sigma_t, count_t, cache = reference_statistics(
      config, extractor, num, batch_size, cache_dir, split)
  sample_fn = make_sample_fn(run, seed, batch_size)
  samples = statistics(sample_batches(sample_fn, variables), extractor, num,
                       progress="prior samples")
  value = fid_lib.frechet_distance(samples.mu, samples.sigma, mu_t, sigma_t)
  if count_t < num:
    writers.log("FID: the %s split has only %d images; used %d samples "
                "against them.", split, count_t, num)
  return {
      "fid": value, "num_samples": samples.count, "num_test": count_t,
      "split": split, "dataset": config.data.name,
      "inception_weights": extractor.path,
      "weights_sha256": extractor.sha256,
      "weights_check": extractor.weights_check,
      "feature_dim": extractor.feature_dim, "quantized_8bit":
      extractor.quantize, "test_statistics": cache,
      "seconds": time.monotonic() - t0,
  }


def compute_fid(workdir: str, inception_weights: str | None, *,
                num: int | None = None, batch_size: int | None = None,
                step: int | None = None, seed: int | None = None,
                extractor: Extractor | None = None,
                config=None) -> dict[str, Any]:
  """FID of a checkpoint of ``workdir``; writes ``eval/fid_<step>.json``.

  Args:
    workdir: the run directory (its ``config.json`` is used).
    inception_weights: the FID Inception weights file (see
      `ocjax.convert.inception`); ignored if ``extractor`` is given.
    num: samples and test images (default 10 000).
    batch_size: images per compiled batch (default 50).
    step: checkpoint step (default: the latest).
    seed: sampling seed (default: the run's).
    extractor: a ready `Extractor` (tests).
    config: optional config; may only change evaluation settings.
  """
  extractor = extractor or load_extractor(inception_weights)
  data_pipelines.configure_tensorflow()
  run, state = run_lib.restore(workdir, step, config=config)
  step = int(state.step)
  eval_dir = os.path.join(workdir, "eval")
  result = fid_of_variables(run, state.variables(), extractor,
                            num=num or DEFAULT_NUM,
                            batch_size=batch_size or DEFAULT_BATCH,
                            seed=seed, cache_dir=eval_dir)
  result["step"] = step
  path = os.path.join(eval_dir, f"fid_{step}.json")
  if jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  notes = {"verified": "", "unverified": ", weights not verified as "
           f"{convert.STANDARD_FILE} by hash", "test": ", a narrowed test "
           "extractor: not comparable with published FIDs"}
  writers.log("FID of step %d: %.3f (%d samples vs %d %s images; %s%s). "
              "Wrote %s.", step, result["fid"], result["num_samples"],
              result["num_test"], result["split"],
              os.path.basename(extractor.path),
              notes[extractor.weights_check], path)
  return result


def _main() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  workdir = flags.DEFINE_string("workdir", None, "Run directory.")
  weights = flags.DEFINE_string(
      "inception_weights", None,
      f"FID Inception weights: {convert.STANDARD_FILE} or its .npz.")
  num = flags.DEFINE_integer("num", DEFAULT_NUM,
                             "Prior samples and test images.")
  batch = flags.DEFINE_integer("batch_size", DEFAULT_BATCH,
                               "Images per compiled batch.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (latest).")
  seed = flags.DEFINE_integer("seed", None, "Sampling seed (the run's).")
  flags.mark_flags_as_required(["workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      extractor = load_extractor(weights.value)  # Fails first, and fast.
      compute_fid(workdir.value, weights.value, num=num.value,
                  batch_size=batch.value, step=step.value, seed=seed.value,
                  extractor=extractor)
    except (FIDError, convert.WeightsError, FileNotFoundError) as e:
      raise SystemExit(f"error: {e}") from None

  app.run(main)


if __name__ == "__main__":
  _main()
