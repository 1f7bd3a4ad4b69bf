"""Fréchet distance between Gaussian fits of features (FID), in NumPy/SciPy.

FID (Heusel et al., 2017) fits a Gaussian to the Inception-v3 pool features
of each image set and measures

  d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

with ``S`` the unbiased sample covariances (``np.cov``), as pytorch-fid and
the TF reference compute them. The features come from
`ocjax.nn.inception`; the statistics of a stream of feature batches are
accumulated in float64 by `GaussianStats` without keeping the features.

Axis legend: N samples, D feature dimension.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import scipy.linalg


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``tr((S_1 S_2)^{1/2})`` of two symmetric PSD matrices.

  ``S_1 S_2`` is similar to the PSD matrix ``S_1^{1/2} S_2 S_1^{1/2}``, so the
  trace of its square root is the sum of the square roots of that matrix's
  eigenvalues: symmetric eigendecompositions only, no complex parts, and
  exact for singular covariances (fewer samples than dimensions).
  """
  w, v = np.linalg.eigh(sigma1)
  sqrt1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # [D, D]
  m = sqrt1 @ sigma2 @ sqrt1
  eig = np.linalg.eigvalsh((m + m.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))


def _trace_sqrtm_scipy(sigma1: np.ndarray, sigma2: np.ndarray,
                       eps: float) -> float:
  """The same trace via ``scipy.linalg.sqrtm(S_1 S_2)`` (pytorch-fid's way).

  A non-finite root is retried with ``eps I`` added to both matrices; an
  imaginary part larger than 1e-3 on the diagonal raises.
  """
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
          "sqrtm(S_1 S_2) has a large imaginary part "
          f"({np.max(np.abs(covmean.imag)):.3g}); the covariances are badly "
          "conditioned. Use method='eigh' or more samples.")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "eigh",
                     eps: float = 1e-6) -> float:
  """Squared Fréchet distance of ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

  Args:
    mu1, mu2: means ``[D]``.
    sigma1, sigma2: covariances ``[D, D]`` (symmetric PSD).
    method: "eigh" (symmetric eigendecompositions; stable, default) or
      "sqrtm" (``scipy.linalg.sqrtm`` of the product, as pytorch-fid).
    eps: diagonal offset of the "sqrtm" retry.

  Returns:
    The distance (FID when the inputs are Inception statistics).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  for name, x, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)),
                         ("sigma1", sigma1, (d, d)),
                         ("sigma2", sigma2, (d, d))):
    if x.shape != shape:
      raise ValueError(f"{name} has shape {x.shape}; expected {shape} (D = "
                       f"{d} from mu1).")
  diff = mu1 - mu2
  if method == "eigh":
    tr_covmean = _trace_sqrt_product(sigma1, sigma2)
  elif method == "sqrtm":
    tr_covmean = _trace_sqrtm_scipy(sigma1, sigma2, eps)
  else:
    raise ValueError(f"Unknown method {method!r}; expected 'eigh' or "
                     "'sqrtm'.")
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * tr_covmean)


@dataclasses.dataclass
class GaussianStats:
  """Running mean and covariance of feature batches (float64).

  Batches are merged with Chan et al.'s pairwise update of the mean and the
  centred sum of squares, so the result equals ``np.mean`` / ``np.cov``
  (``ddof=1``) of the concatenated features without keeping them.

  Attributes:
    count: number of feature vectors seen.
    mean: ``[D]`` running mean.
    m2: ``[D, D]`` centred sum of outer products.
  """
  count: int = 0
  mean: Optional[np.ndarray] = None
  m2: Optional[np.ndarray] = None

  def update(self, features) -> "GaussianStats":
    """Adds ``features`` ``[N, D]``; returns self."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features must be [N, D], got shape {x.shape}.")
    if self.mean is not None and x.shape[1] != self.mean.shape[0]:
      raise ValueError(f"features have D = {x.shape[1]}, the statistics "
                       f"D = {self.mean.shape[0]}.")
    n = x.shape[0]
    if n == 0:
      return self
    mean_b = x.mean(axis=0)
    centred = x - mean_b
    m2_b = centred.T @ centred
    if self.count == 0:
      self.count, self.mean, self.m2 = n, mean_b, m2_b
      return self
    total = self.count + n
    delta = mean_b - self.mean
    self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.count * n
                                                         / total)
    self.mean = self.mean + delta * (n / total)
    self.count = total
    return self

  @property
  def mu(self) -> np.ndarray:
    self._check(1)
    return self.mean

  @property
  def sigma(self) -> np.ndarray:
    """Unbiased covariance ``[D, D]`` (``np.cov(features, rowvar=False)``)."""
    self._check(2)
    return self.m2 / (self.count - 1)

  def _check(self, needed: int) -> None:
    if self.count < needed:
      raise ValueError(f"Gaussian statistics need at least {needed} "
                       f"feature vectors; have {self.count}.")

  def save(self, path: str, **info) -> str:
    """Writes ``mu``, ``sigma``, ``count`` (+ string ``info``) to ``.npz``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, mu=self.mu, sigma=self.sigma, count=self.count,
             **{f"info_{k}": np.asarray(str(v)) for k, v in info.items()})
    os.replace(tmp, path)
    return path


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray, int]:
  """``(mu, sigma, count)`` from a file written by `GaussianStats.save`.

  Also reads pytorch-fid's ``.npz`` statistics (``mu``, ``sigma``; count -1).
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      if "mu" not in data or "sigma" not in data:
        raise ValueError(f"{path!r} holds {sorted(data.files)}; expected "
                         "'mu' and 'sigma' (FID statistics).")
      count = int(data["count"]) if "count" in data else -1
      return np.asarray(data["mu"]), np.asarray(data["sigma"]), count
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read FID statistics from {path!r}: {e}") from e


def fid_from_features(features1, features2, **kwargs) -> float:
  """FID of two feature sets ``[N1, D]`` and ``[N2, D]``."""
  a = GaussianStats().update(features1)
  b = GaussianStats().update(features2)
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, **kwargs)
