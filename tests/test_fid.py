"""FID: Fréchet distance, statistics, Inception port, the whole pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import test_eval_grid
from ocjax.convert import inception as convert
from ocjax.eval import fid as fid_eval
from ocjax.metrics import fid as fid_lib
from ocjax.nn import inception

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


# --------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_of_diagonal_gaussians(method):
  rng = np.random.default_rng(0)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(
      s1 + s2 - 2 * np.sqrt(s1 * s2))
  got = fid_lib.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2),
                                 method=method)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_of_commuting_covariances():
  # S_i = Q diag(a_i) Q^T: the distance is |dmu|^2 + sum (sqrt a1 - sqrt a2)^2.
  rng = np.random.default_rng(1)
  d = 5
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a1, a2 = rng.uniform(0.2, 4, d), rng.uniform(0.2, 4, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  got = fid_lib.frechet_distance(mu1, q @ np.diag(a1) @ q.T, mu2,
                                 q @ np.diag(a2) @ q.T)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(
      (np.sqrt(a1) - np.sqrt(a2)) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_distance_general_covariances_and_one_dimension():
  rng = np.random.default_rng(2)
  s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8, 2.0)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  # Independent reference: the trace of scipy's sqrtm of the product.
  ref = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
         - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
  for method in ("eigh", "sqrtm"):
    np.testing.assert_allclose(
        fid_lib.frechet_distance(mu1, s1, mu2, s2, method=method), ref,
        rtol=1e-8)
  # Same Gaussian: 0. Symmetric.
  assert abs(fid_lib.frechet_distance(mu1, s1, mu1, s1)) < 1e-9
  np.testing.assert_allclose(fid_lib.frechet_distance(mu1, s1, mu2, s2),
                             fid_lib.frechet_distance(mu2, s2, mu1, s1),
                             rtol=1e-9)
  # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2.
  np.testing.assert_allclose(
      fid_lib.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]), 4.0 + 1.0)


def test_frechet_distance_with_singular_covariances():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 1.0
  value = fid_lib.fid_from_features(x, y)  # N < D: rank-deficient.
  assert np.isfinite(value) and value > 0


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r"sigma2 has shape \(2, 2\)"):
    fid_lib.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match="Unknown method"):
    fid_lib.frechet_distance(0.0, 1.0, 0.0, 1.0, method="svd")


def test_sample_fid_approaches_the_analytic_distance():
  rng = np.random.default_rng(4)
  d, n = 4, 40_000
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  x = rng.multivariate_normal(mu1, s1, size=n)
  y = rng.multivariate_normal(mu2, s2, size=n)
  exact = fid_lib.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(fid_lib.fid_from_features(x, y), exact,
                             rtol=0.05)


def test_gaussian_stats_match_numpy_over_uneven_batches(tmp_path):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(103, 7)) * 3 + 10
  stats = fid_lib.GaussianStats()
  for chunk in np.split(x, [1, 8, 8, 50, 97]):
    stats.update(chunk)
  assert stats.count == 103
  np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False),
                             rtol=1e-10)
  path = stats.save(str(tmp_path / "s.npz"), dataset="x")
  mu, sigma, count = fid_lib.load_stats(path)
  np.testing.assert_array_equal(mu, stats.mu)
  np.testing.assert_array_equal(sigma, stats.sigma)
  assert count == 103
  with pytest.raises(ValueError, match="D = 7"):
    stats.update(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="at least 2"):
    _ = fid_lib.GaussianStats().update(np.zeros((1, 3))).sigma


# ------------------------------------------------------------ Inception-v3
def _torch_bilinear(x, out):
  """NumPy ``F.interpolate(mode='bilinear', align_corners=False)``."""

  def axis_weights(n_in):
    src = (np.arange(out) + 0.5) * (n_in / out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(int)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0

  r0, r1, lr = axis_weights(x.shape[1])
  c0, c1, lc = axis_weights(x.shape[2])
  rows = (x[:, r0] * (1 - lr)[None, :, None, None]
          + x[:, r1] * lr[None, :, None, None])
  return (rows[:, :, c0] * (1 - lc)[None, None, :, None]
          + rows[:, :, c1] * lc[None, None, :, None])


@pytest.mark.parametrize("size", [(32, 48), (400, 310)])
def test_resize_matches_pytorch_bilinear(size):
  x = np.random.default_rng(6).random((2, *size, 3)).astype(np.float32)
  got = np.asarray(inception.resize_bilinear(jnp.asarray(x), 299))
  # Sample positions are float32 (as in PyTorch): ~1e-5 of rounding. An
  # antialiased or corner-aligned resize would differ by ~1e-1.
  np.testing.assert_allclose(got, _torch_bilinear(x, 299), atol=5e-5)


def test_fid_pools_exclude_padding_and_max_pool_pads_with_minus_inf():
  x = jnp.ones((1, 5, 5, 1))
  # count_include_pad=False: the border averages stay 1 (not 4/9, 6/9).
  np.testing.assert_allclose(inception.avg_pool_same(x), 1.0, rtol=1e-6)
  y = -jnp.ones((1, 5, 5, 1))
  np.testing.assert_allclose(inception.max_pool_same(y), -1.0)
  z = np.arange(25.0).reshape(1, 5, 5, 1)
  want = np.array([[max(z[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, 0]
                        .ravel()) for j in range(5)] for i in range(5)])
  np.testing.assert_array_equal(
      np.asarray(inception.max_pool_same(jnp.asarray(z)))[0, ..., 0], want)


def test_feature_dims():
  assert inception.feature_dim(1) == 2048
  assert inception.feature_dim(16) == 128


def _pytorch_like_state_dict():
  """A full-size state dict as pytorch-fid saves it (random values)."""
  sd = convert.random_state_dict(width_divisor=1, seed=0)
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
  sd["fc.bias"] = np.zeros((1008,), np.float32)
  sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.int64)
  return sd


def test_converter_maps_names_and_layouts(tmp_path):
  sd = _pytorch_like_state_dict()
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # OIHW
  assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
  assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  path = str(tmp_path / "fid_inception.npz")
  np.savez(path, **sd)
  module, variables = convert.load_fid_inception(path)
  assert module.width_divisor == 1
  abstract = convert.abstract_variables(1)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape),
               abstract, variables)
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # [O, I, 1, 7]
  k = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert k.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(k[0, 3, 5, 9], w[9, 5, 0, 3])
  np.testing.assert_array_equal(
      variables["batch_stats"]["Mixed_7c"]["branch1x1"]["bn"]["var"],
      sd["Mixed_7c.branch1x1.bn.running_var"])
  np.testing.assert_array_equal(
      variables["params"]["Conv2d_4a_3x3"]["bn"]["scale"],
      sd["Conv2d_4a_3x3.bn.weight"])
  back = convert.variables_to_torch(variables)
  assert set(back) == {k for k in sd if not k.startswith("fc.")
                       and not k.endswith("num_batches_tracked")}
  for name, value in back.items():
    np.testing.assert_array_equal(value, sd[name])


def test_converter_errors_name_the_problem(tmp_path):
  sd = convert.random_state_dict(width_divisor=16)
  broken = dict(sd)
  del broken["Mixed_6c.branch7x7dbl_3.conv.weight"]
  broken["Mixed_6c.branch_pool.bn.running_var"] = np.ones(3, np.float32)
  broken["Mixed_9z.conv.weight"] = np.ones((1, 1, 1, 1), np.float32)
  with pytest.raises(convert.WeightsError) as e:
    convert.torch_to_variables(broken, source="'w.npz'")
  msg = str(e.value)
  assert "'w.npz'" in msg
  assert "Mixed_6c.branch7x7dbl_3.conv.weight" in msg
  assert "Mixed_6c.branch_pool.bn.running_var: (3,)" in msg
  assert "Mixed_9z.conv.weight" in msg
  with pytest.raises(convert.WeightsError, match="not an FID Inception"):
    convert.torch_to_variables({"encoder.weight": np.ones(3)})
  with pytest.raises(convert.WeightsError, match="does not exist"):
    convert.load_state_dict(str(tmp_path / "missing.pth"))
  with pytest.raises(convert.WeightsError, match="No Inception weights"):
    convert.load_state_dict("")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(convert.WeightsError, match="Cannot read"):
    convert.load_state_dict(str(bad))


def test_pth_without_torch_explains_the_conversion(tmp_path):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("PyTorch is installed")
  except ImportError:
    pass
  path = tmp_path / convert.STANDARD_FILE
  path.write_bytes(b"\0")
  with pytest.raises(convert.WeightsError, match=r"--pth=FILE.pth"):
    convert.load_state_dict(str(path))


def _pytorch_fid():
  """pytorch-fid's inception module, or skip when it is not installed (it is
  an optional cross-check needing torch and torchvision). Any other failure
  of the import is an error, not a skip."""
  try:
    from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name not in ("pytorch_fid", "torch", "torchvision"):
      raise
    pytest.skip(f"pytorch-fid is not installed ({e.name} missing)")
  return pf, torch


@pytest.mark.slow
def test_features_match_pytorch_fid_with_the_same_weights(tmp_path,
                                                          monkeypatch):
  # The reference: pytorch-fid's own InceptionV3 (resize, scaling, FID
  # blocks), given our full-size random state dict instead of a download.
  pf, torch = _pytorch_fid()
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  sd = _pytorch_like_state_dict()
  tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  monkeypatch.setattr(pf, "load_state_dict_from_url",
                      lambda *a, **k: tensors)
  net = pf.InceptionV3([3]).eval()
  path = str(tmp_path / "w.npz")
  np.savez(path, **sd)
  module, variables = convert.load_fid_inception(path)
  rng = np.random.default_rng(8)
  for shape in [(2, 32, 32, 3), (1, 120, 90, 3)]:  # up- and downsampling
    x = rng.random(shape).astype(np.float32)
    with torch.no_grad():
      ref = net(torch.from_numpy(x).permute(0, 3, 1, 2))[0][:, :, 0, 0]
    got = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x)))
    np.testing.assert_allclose(got, ref.numpy(), rtol=0,
                               atol=1e-5 * float(ref.abs().max()))
  a, b = rng.normal(size=(300, 32)), rng.normal(size=(200, 32)) * 1.3 + 0.2
  ref = fid_score.calculate_frechet_distance(
      a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  np.testing.assert_allclose(fid_lib.fid_from_features(a, b), ref,
                             rtol=1e-9)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inception") / "tiny.npz")
  convert.main([f"--random_tiny={path}", "--width_divisor=16"])
  return path


def test_tiny_extractor_features(tiny_weights):
  extractor = fid_eval.load_extractor(tiny_weights)
  assert extractor.feature_dim == 128 and extractor.weights_check == "test"
  images = np.random.default_rng(7).random((4, 32, 32, 3)).astype(np.float32)
  feats = extractor(images)
  assert feats.shape == (4, 128) and np.all(np.isfinite(feats))
  assert np.ptp(feats, axis=0).max() > 0  # Images differ.
  # Inputs are quantised to 8 bits, as PNG files are.
  np.testing.assert_array_equal(
      extractor(np.round(images * 255) / 255), feats)


# ---------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return test_eval_grid.make_run(tmp_path_factory)


def test_fid_of_a_run_end_to_end(run, tiny_weights, monkeypatch):
  config, workdir = run
  extractor = fid_eval.load_extractor(tiny_weights)
  result = fid_eval.compute_fid(workdir, None, num=12, batch_size=4,
                                extractor=extractor)
  path = os.path.join(workdir, "eval", "fid_0.json")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["fid"] == pytest.approx(result["fid"])
  assert np.isfinite(result["fid"]) and result["fid"] > 0
  assert result["num_samples"] == 12
  assert result["num_test"] == 8  # The tiny test split has 8 images.
  assert result["feature_dim"] == 128 and result["weights_check"] == "test"
  cache = result["test_statistics"]
  assert os.path.exists(cache) and cache.startswith(
      os.path.join(workdir, "eval", "fid_stats_test_"))
  # Again: the test statistics come from the cache.
  def fail(*a, **k):
    raise AssertionError("the test set was read again")
  monkeypatch.setattr(fid_eval, "dataset_batches", fail)
  mu, sigma, count, again = fid_eval.reference_statistics(
      config, extractor, 12, 4, os.path.join(workdir, "eval"))
  assert again == cache and count == 8 and mu.shape == (128,)
  # The test images against themselves: 0.
  assert abs(fid_lib.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
  # Another number of images or other weights: another cache file.
  monkeypatch.undo()
  *_, other = fid_eval.reference_statistics(
      config, extractor, 6, 4, os.path.join(workdir, "eval"))
  assert other != cache and os.path.exists(other)


def test_fid_without_weights_is_a_clear_error(run):
  config, workdir = run
  with pytest.raises(fid_eval.FIDError, match="--inception_weights=FILE"):
    fid_eval.compute_fid(workdir, None)


def test_fid_cli_without_weights_fails_clearly(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "ocjax.eval.fid", f"--workdir={tmp_path}",
       "--num=4"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert r.returncode != 0
  assert "--inception_weights=FILE" in r.stderr
  assert convert.STANDARD_FILE in r.stderr
