r"""How closely ocjax's GENESIS-V2 reproduces the official implementation.

    python benchmarks/parity.py [--fixture=PATH/objects_room_k7.npz]

Prints, for each group of quantities in the GENESIS-V2 reference fixture, the
largest error relative to each tensor's largest magnitude (absolute for the
metric scores): the figures quoted in the README. The tests in tests/test_genesis_v2_parity.py assert bounds on
the same quantities.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import conftest  # noqa: E402  pylint: disable=g-import-not-at-top
import test_genesis_v2_parity as parity  # noqa: E402

from ocjax.metrics import segmentation as seg  # noqa: E402


def rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def geco_trace(ref, trace):
  """(EMA bit-exact?, max rel. error of beta and loss) over a GECO trace."""
  out = parity.run_geco_trace(ref, trace)
  exact = bool(np.array_equal(out["ema"], ref[f"{trace}/ema"]))
  return exact, max(rel(out[k], ref[f"{trace}/{k}"])
                    for k in ("beta", "beta_used", "loss"))


def prior_samples(ref):
  """Max rel. error over the tensors of the prior-sampling trace."""
  return max(rel(a, b) for a, b in parity.run_prior_samples(ref).values())


def metric_values(ref):
  """Max abs. error of ARI/MSC per image and mean over the metric cases."""
  errs = []
  for c in range(int(ref["metric/num_cases"])):
    case = {k[len(f"metric/case{c}/"):]: ref[k] for k in ref
            if k.startswith(f"metric/case{c}/")}
    scores = seg.segmentation_metrics(case["log_m"][..., None], case["gt"])
    for name in ("ari", "ari_fg", "msc", "msc_fg", "msc_scaled",
                 "msc_fg_scaled"):
      got = np.asarray(scores[name], np.float64)
      errs.append(np.abs(got - case[f"{name}_per_image"]).max())
      errs.append(abs(got.mean() - float(case[name])))
  return float(max(errs)), int(ref["metric/num_cases"])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--fixture", default=None)
  args = p.parse_args()
  if args.fixture:
    with np.load(args.fixture) as d:
      ref = {k: d[k] for k in d.files}
  else:
    ref = conftest.load_fixture("genesis_v2_reference/objects_room_k7.npz")

  loss, out, inter, grads = parity._run(ref, with_grad=True)  # pylint: disable=protected-access
  o = lambda k: ref[f"out/{k}"]
  kb, kbc, nchw = parity._kb, parity._kb_chw, parity._nchw  # pylint: disable=protected-access
  inter_pairs = [
      (nchw(inter["enc_feat"][0]), o("enc_feat")),
      (nchw(inter["attention_features"][0]), o("seg_head")),
      (nchw(inter["feat"][0]), o("feat_head")),
      (nchw(out.aux["zeta"]), o("colour")),
      (kb(out.aux["seeds"]), o("seeds")),
      (np.exp(kb(out.aux["log_m"][..., 0])), np.exp(o("log_m_k")[:, :, 0])),
      (np.exp(kb(out.aux["log_s"][..., 0])), np.exp(o("log_s_k")[:, :, 0])),
      (kb(inter["pooled"][0]), o("obj_feat")),
      (kb(inter["posterior_stats"][0]), o("z_head_out")),
      (kb(out.latents), o("z")),
      (kbc(out.components), o("x_r_k")),
      (kbc(inter["mask_logits"][0]), o("mask_logits")),
      (np.exp(kbc(out.aux["log_pi"])), np.exp(o("log_m_r_k"))),
      (nchw(out.recon), o("recon")),
      (kb(inter["prior_h"][0]), o("prior_lstm_out")),
      (kb(out.aux["prior_mu"][:, 1:]), o("prior_mu")),
      (kb(out.aux["prior_sigma"][:, 1:]), o("prior_sigma")),
  ]
  seeds_equal = bool(np.all(kb(out.aux["seed_index"]) == o("seed_index")))
  rows = [("intermediates (17 tensors)",
           max(rel(a, b) for a, b in inter_pairs),
           f"seed pixels identical: {seeds_equal}"),
          ("NLL per image", rel(out.losses["nll"], o("err")), ""),
          ("KL per slot", rel(kb(out.aux["kl_k"]), o("kl")), ""),
          ("loss", rel(loss, o("loss")),
           f"{float(loss):.4f} vs {float(o('loss')):.4f}")]
  names = list(ref["meta/param_names"])
  g32 = [rel(grads[n], ref[f"grad/{n}"]) for n in names
         if n != "att_process.colour_head.conv.bias"
         and not n.startswith("seg_head.")]
  rows.append(("gradients, float32 (%d tensors)" % len(g32), max(g32),
               "exact zeros reproduced"))
  with jax.enable_x64(True):
    _, _, _, g64 = parity._run(ref, dtype=np.float64, with_grad=True)  # pylint: disable=protected-access
  e64 = [rel(g64[n], ref[f"grad64/{n}"]) for n in names
         if f"grad64/{n}" in ref and n != "att_process.colour_head.conv.bias"]
  rows.append(("gradients, float64 vs reference float64 (%d)" % len(e64),
               max(e64), ""))
  for trace in ("geco", "geco_cross"):
    exact, err = geco_trace(ref, trace)
    rows.append((f"GECO trace {trace!r} ({len(ref[trace + '/err_in'])} steps)",
                 err, f"beta and loss; EMA bit-exact: {exact}"))
  rows.append(("prior samples (7 tensors)", prior_samples(ref), ""))
  err, cases = metric_values(ref)
  rows.append((f"ARI/MSC values ({cases} cases)", err,
               "absolute error of scores in [0, 1]"))
  print(f"{'quantity':48s} {'max error':>14s}  note")
  for name, err, note in rows:
    print(f"{name:48s} {err:14.2e}  {note}")


if __name__ == "__main__":
  main()
