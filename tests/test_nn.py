"""Building blocks: transposed convolutions, IC-SBP, LSTM prior, layers."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ocjax.nn import autoregressive_prior
from ocjax.nn import conv
from ocjax.nn import conv_transpose
from ocjax.nn import icsbp
from ocjax.nn import layers


# --------------------------------------------------- transposed convolution
@pytest.mark.parametrize("k,p,op", [(5, 2, 1), (4, 1, 0), (3, 1, 1),
                                    (2, 0, 0)])
def test_subpixel_equals_transposed_convolution(k, p, op):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, 4, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
  fast = conv_transpose.conv_transpose_subpixel(x, w, p, op)
  plain = conv_transpose.conv_transpose_dilated(x, w, p, op)
  # XLA's own transposed convolution with torch's kernel layout.
  lax_ref = jax.lax.conv_transpose(
      x, jnp.swapaxes(w, 2, 3), (2, 2), ((k - 1 - p, k - 1 - p + op),) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
  assert fast.shape == (2, 8, 12, 5)
  np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(plain, lax_ref, rtol=1e-6, atol=1e-6)


def test_subpixel_matches_scatter_definition():
  """y[o] = sum_{i,t: o = 2i - p + t} x[i] w[t], written as loops."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
  w = rng.normal(size=(5, 5, 2, 4)).astype(np.float32)
  y = np.zeros((1, 6 + 1 + 4, 6 + 1 + 4, 4), np.float64)  # room, then crop
  for i in range(3):
    for j in range(3):
      for ty in range(5):
        for tx in range(5):
          y[0, 2 * i + ty, 2 * j + tx] += x[0, i, j] @ w[ty, tx]
  want = y[:, 2:2 + 6, 2:2 + 6]  # padding 2, output 2n with output_padding 1
  got = conv_transpose.conv_transpose_subpixel(jnp.asarray(x),
                                               jnp.asarray(w), 2, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_subpixel_rejects_non_doubling_configs():
  with pytest.raises(ValueError, match="twice the input"):
    conv_transpose.conv_transpose_subpixel(
        jnp.zeros((1, 4, 4, 1)), jnp.zeros((5, 5, 1, 1)), 1, 0)


@pytest.mark.parametrize("k,p,op", [(5, 2, 1), (4, 1, 0), (3, 1, 1)])
@pytest.mark.parametrize("size", [4, 10])  # im2col path / XLA convolutions
@pytest.mark.parametrize("matmul_grad", [False, True])
def test_subpixel_gradients_match(k, p, op, size, matmul_grad):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 2)), jnp.float32)
  fast = lambda x, w, p, op: conv_transpose.conv_transpose_subpixel(
      x, w, p, op, matmul_grad=matmul_grad)
  f = lambda fn: jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w, p, op))),
                          argnums=(0, 1))(x, w)
  for a, b in zip(f(fast), f(conv_transpose.conv_transpose_dilated)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,p,op", [(5, 2, 1), (4, 1, 0), (3, 1, 1),
                                    (2, 0, 0)])
def test_col2im_equals_transposed_convolution_and_its_gradients(k, p, op):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, 4, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
  col2im = conv_transpose.conv_transpose_col2im
  plain = conv_transpose.conv_transpose_dilated
  assert col2im(x, w, p, op).shape == (2, 8, 12, 5)
  np.testing.assert_allclose(col2im(x, w, p, op), plain(x, w, p, op),
                             rtol=1e-5, atol=1e-5)
  f = lambda fn: jax.jit(jax.grad(
      lambda x, w: jnp.sum(jnp.sin(fn(x, w, p, op))), argnums=(0, 1)))(x, w)
  for a, b in zip(f(col2im), f(plain)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_col2im_rejects_non_doubling_configs():
  with pytest.raises(ValueError, match="twice the input"):
    conv_transpose.conv_transpose_col2im(
        jnp.zeros((1, 4, 4, 1)), jnp.zeros((5, 5, 1, 1)), 1, 0)


def test_tap_products_gradients_match_autodiff():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 2, 3, 4)), x.dtype)
  ref = lambda x, w: jnp.einsum("mc,ijco->mijo", x, w).reshape(7, 16)
  np.testing.assert_allclose(conv_transpose.tap_products(x, w), ref(x, w),
                             rtol=1e-5, atol=1e-5)
  f = lambda fn: jax.grad(lambda x, w: jnp.sum(jnp.cos(fn(x, w))),
                          argnums=(0, 1))(x, w)
  for a, b in zip(f(conv_transpose.tap_products), f(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ layers
def test_torch_linspace_endpoints_and_symmetry():
  for n in (2, 4, 7, 64, 128):
    v = layers.torch_linspace(-1.0, 1.0, n)
    assert v[0] == -1.0 and v[-1] == 1.0
    np.testing.assert_allclose(v, np.linspace(-1, 1, n), atol=2e-7)


def test_nearest_resampling_keeps_even_pixels():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(layers.downsample_nearest(x)[0, ..., 0],
                                [[0, 2], [8, 10]])
  up = layers.upsample_nearest(layers.downsample_nearest(x))
  np.testing.assert_array_equal(up[0, :2, :2, 0], [[0, 0], [0, 0]])


def test_straight_through_clamp():
  x = jnp.array([-1.0, 0.5, 2.0])
  y, g = jax.value_and_grad(
      lambda x: jnp.sum(layers.clamp_straight_through(x, 0.0, 1.0) * 3.0))(x)
  assert float(y) == pytest.approx(4.5)
  np.testing.assert_array_equal(g, [3.0, 3.0, 3.0])


# ------------------------------------------------------------------- IC-SBP
def _coords(h, w):
  g = jnp.asarray(layers.coordinate_grid(h, w))  # [H, W, 2]
  return jnp.pad(g, ((0, 0), (0, 0), (6, 0)))[None]  # [1, H, W, 8]


class IcsbpPartitionTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*icsbp.KERNELS)
  def test_masks_are_a_partition(self, kernel):
    def run(zeta, u):
      return icsbp.icsbp(zeta, u,
                         jnp.float32(icsbp.initial_sigma(kernel, 5)), 5,
                         kernel)

    rng = np.random.default_rng(0)
    zeta = jnp.asarray(rng.normal(size=(3, 16, 16, 8)) * 0.3, jnp.float32)
    u = jnp.asarray(rng.uniform(size=(3, 16, 16)), jnp.float32)
    out = self.variant(run)(zeta, u)
    m = np.exp(np.asarray(out["log_masks"]))
    self.assertEqual(m.shape, (3, 5, 16, 16))
    self.assertTrue((m >= 0).all() and (m <= 1 + 1e-6).all())
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-5)
    # The scopes shrink: s_{k+1} <= s_k.
    s = np.exp(np.asarray(out["log_scopes"]))
    self.assertTrue((np.diff(s, axis=1) <= 1e-6).all())
    np.testing.assert_array_equal(out["num_slots_used"], [5, 5, 5])


def test_icsbp_seed_is_argmax_of_scope_times_score():
  rng = np.random.default_rng(1)
  zeta = jnp.asarray(rng.normal(size=(2, 8, 8, 8)), jnp.float32)
  u = jnp.asarray(rng.uniform(size=(2, 8, 8)), jnp.float32)
  out = icsbp.icsbp(zeta, u, jnp.float32(0.2), 4)
  scopes = np.exp(np.asarray(out["log_scopes"])).reshape(2, 4, -1)
  u = np.asarray(u).reshape(2, -1)
  for k in range(3):
    np.testing.assert_array_equal(out["seed_index"][:, k],
                                  np.argmax(u * scopes[:, k], axis=1))
    np.testing.assert_array_equal(
        out["seeds"][:, k],
        np.asarray(zeta).reshape(2, 64, 8)[np.arange(2),
                                           out["seed_index"][:, k]])


def test_icsbp_never_seeds_in_explained_pixels():
  """Three well-separated embedding clusters: each seed opens a new one."""
  h = w = 12
  labels = np.zeros((h, w), int)
  labels[:, 4:8] = 1
  labels[:, 8:] = 2
  centres = np.eye(8)[:3] * 10.0
  zeta = jnp.asarray(centres[labels][None], jnp.float32)
  run = jax.jit(lambda u: icsbp.icsbp(zeta, u, jnp.float32(1.0), 4))
  for seed in range(20):
    out = run(jax.random.uniform(jax.random.key(seed), (1, h, w)))
    picked = labels.reshape(-1)[np.asarray(out["seed_index"][0, :3])]
    assert sorted(picked.tolist()) == [0, 1, 2], picked
    # Each seed pixel was unexplained (full scope) when chosen.
    scopes = np.exp(np.asarray(out["log_scopes"][0])).reshape(4, -1)
    for k in range(3):
      assert scopes[k, out["seed_index"][0, k]] > 0.9


@pytest.mark.parametrize("kernel", icsbp.KERNELS)
@pytest.mark.parametrize("num_slots", [4, 7, 10])
def test_kernel_initialisation_gives_equal_circles(kernel, num_slots):
  """App. C: psi(0, 1/sqrt(K)) = 0.5, so alpha > 0.5 covers pi/(4K)."""
  sigma = icsbp.initial_sigma(kernel, num_slots)
  r = 1.0 / math.sqrt(num_slots)
  half = icsbp.distance_kernel(kernel, jnp.float32(r * r), jnp.float32(sigma))
  assert float(half) == pytest.approx(0.5, rel=1e-5)
  n = 128
  zeta = _coords(n, n)
  centre = zeta[0, n // 2, n // 2]
  d2 = jnp.sum((zeta[0] - centre) ** 2, -1)
  alpha = icsbp.distance_kernel(kernel, d2, jnp.float32(sigma))
  area = float(jnp.mean(alpha > 0.5))
  assert area == pytest.approx(math.pi / (4 * num_slots), rel=0.05)


def test_initial_masks_have_similar_areas():
  """Fig. 9: with coordinate embeddings the first masks are blobs of about
  1/K of the image; the masks still partition it."""
  k, n = 7, 64
  zeta = jnp.tile(_coords(n, n), (64, 1, 1, 1))
  u = jax.random.uniform(jax.random.key(0), (64, n, n))
  out = icsbp.icsbp(zeta, u, jnp.float32(icsbp.initial_sigma("gaussian", k)),
                    k)
  areas = np.exp(np.asarray(out["log_masks"])).sum((2, 3)) / n**2  # [B, K]
  # E[area of the first mask] = (pi sigma) / 4 = pi / (4 K ln 2) for a seed
  # far from the border, less near it.
  first = areas[:, 0].mean()
  assert 0.6 / k < first < math.pi / (4 * k * math.log(2.0)) * 1.05
  np.testing.assert_allclose(areas.sum(1), 1.0, atol=1e-4)


def test_flexible_k_stops_and_pads():
  """Two objects: after two masks the new mask is tiny, the scope remains."""
  h = w = 16
  labels = np.zeros((h, w), int)
  labels[:, 8:] = 1
  zeta = jnp.asarray((np.eye(8)[:2] * 10.0)[labels][None], jnp.float32)
  u = jax.random.uniform(jax.random.key(0), (1, h, w))
  out = icsbp.icsbp(zeta, u, jnp.float32(1.0), 6, flexible=True,
                    min_mask_pixels=20.0)
  used = int(out["num_slots_used"][0])
  m = np.exp(np.asarray(out["log_masks"][0]))
  assert used == 3  # two objects + the (nearly empty) remaining scope
  np.testing.assert_allclose(m.sum(0), 1.0, atol=1e-5)
  assert (m[used:] == 0).all()
  assert m[:2].sum((1, 2)).min() > 60
  fixed = icsbp.icsbp(zeta, u, jnp.float32(1.0), 6)
  np.testing.assert_allclose(np.exp(fixed["log_masks"][0, :2]), m[:2],
                             rtol=1e-6)


# ---------------------------------------------------------- autoregressive
def test_prior_sampling_matches_likelihood_path():
  """Sampling with eps and scoring the samples give the same statistics."""
  prior = autoregressive_prior.AutoregressivePrior(latent_dim=4, hidden=8)
  eps = jax.random.normal(jax.random.key(0), (3, 5, 4))
  params = jax.jit(prior.init)(jax.random.key(1), eps)
  s = jax.jit(lambda p, e: prior.apply(p, e, method=prior.sample))(
      params, eps)
  stats = jax.jit(prior.apply)(params, s["z"])
  np.testing.assert_allclose(stats["mu"], s["mu"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["sigma"], s["sigma"], rtol=1e-5)
  np.testing.assert_allclose(s["z"], eps * s["sigma"] + s["mu"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(s["mu"][:, 0], 0.0)
  np.testing.assert_array_equal(s["sigma"][:, 0], 1.0)
  assert (np.asarray(s["sigma"]) > 1e-4).all()
  assert (np.asarray(s["sigma"]) <= 1 + 1e-4).all()


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 1), (1, 0)),
                                     ((2, 0), (0, 2))])
def test_matmul_kernel_gradient_equals_autodiff(padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 6, 5, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32)
  f = lambda **kw: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv.conv2d(
      x, w, padding, small_maps=False, **kw))), argnums=(0, 1))(x, w)
  for a, b in zip(f(matmul_grad=True), f(matmul_grad=False)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(
      conv.conv2d(x, w, padding, matmul_grad=True, small_maps=False),
      conv.conv2d(x, w, padding, small_maps=False))


@pytest.mark.parametrize("size,k,stride,padding", [
    (2, 3, 1, ((1, 1), (1, 1))), (8, 4, 2, ((1, 1), (1, 1))),
    (5, 3, 2, ((0, 2), (2, 0))), (6, 3, 1, ((-1, 1), (1, -1))),
    (4, 1, 1, ((0, 0), (0, 0)))])
def test_small_map_convolution_equals_xla_convolution(size, k, stride,
                                                      padding):
  """im2col + matmul (maps of <= 64 output pixels on CPU) = lax's conv,
  values and gradients, also with strides and negative (cropping) padding."""
  rng = np.random.default_rng(size + k)
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
  want = jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = conv.conv2d(x, w, padding, (stride, stride), small_maps=True)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  f = lambda small: jax.grad(lambda x, w: jnp.sum(jnp.sin(conv.conv2d(
      x, w, padding, (stride, stride), small_maps=small))),
                             argnums=(0, 1))(x, w)
  for a, b in zip(f(True), f(False)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_small_maps_are_the_cpu_default_only_up_to_the_threshold():
  x = jnp.ones((1, 9, 9, 2))
  w = jnp.ones((3, 3, 2, 2))
  small = jax.make_jaxpr(lambda x: conv.conv2d(x, w, ((0, 0), (0, 0)),
                                               (4, 4)))(x)  # 2x2 outputs
  large = jax.make_jaxpr(lambda x: conv.conv2d(x, w, ((1, 1), (1, 1)),
                                               (4, 4)))(x)  # 3x3 outputs
  assert conv.SMALL_MAP_PIXELS == 4
  assert "dot_general" in str(small) and "conv_general" not in str(small)
  assert "conv_general" in str(large)