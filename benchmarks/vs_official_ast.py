r"""AST-Seg against the official PyTorch implementation, side by side.

    python benchmarks/vs_official_ast.py --official_dir=DIR [--batch=8,32] \
        [--rounds=7] [--inference] [--parts] [--grad_accum=auto] [--threads=0] \
        [--device=auto] [--precision=float32] [--phase=3 | --phase=2 \
        [--given_background]]

``DIR`` (or the environment variable ``AST_OFFICIAL``) is a checkout of the
official code (MIT licence; never copied into this repository, it is
imported from there):

    git clone https://github.com/BrunoSauvalle/AST DIR
    pip install torch             # (or .[torch])

Both sides build AST-Seg (paper 003, Tables 6-8) in the ShapeStacks setting:
64x64 images, K = 6 object queries, isotropic scaling, the U-Net of Table 8
(80, 128, 192, 256, 256, 256), a transformer encoder (d = 256, 8 heads,
feed-forward 512, 6 layers, dropout 0.1), z_what 32, 32x32 glimpses, inverse
scales in [1.3, 24], and AE-NE's background autoencoder of the "complex"
schedule (background/config.py's default, ShapeStacks). They take the same
random images (NHWC for us, NCHW for torch) and time the training step of
the curriculum's phase 3 (the background autoencoder and the object networks
trained jointly, the pixel-entropy term at full weight), at training step
30,000 (beyond the entropy warm-up of 10k steps and the 30k steps of phase
2), or, with ``--inference``, a forward pass without gradients:

* official (MF_train.object_train's loop body in phase 3): the background
  ``BG(BE(255 x)) / 255`` with gradients, ``netE(x)``, ``netG(latents,
  background)``, ``MF_train.losses`` (read from MF_train.py itself: that
  module cannot be imported, it loads a trained background checkpoint at
  import), ``loss = reconstruction + 1e-2 min(1, step / 10k)^2 entropy``,
  ``backward``, and Adam (lr 4e-5, betas 0.90 / 0.98, eps 1e-9) over the
  four networks; every network in training mode (BatchNorm batch
  statistics, transformer dropout). ``--inference``: the same forward pass
  and losses under ``torch.no_grad`` in evaluation mode, as
  MF_stats.evaluate runs it.
* ours: the jitted step of `ocjax.train.step.make_train_step` with the
  config ``experiments/ast_seg.py:shapestacks`` (background_training
  "joint", i.e. trained with the objects as in phase 3), the train state's
  step set to 30,000 (the trainer passes it to the model, which declares
  ``uses_step``): forward (BatchNorm batch statistics, dropout), losses,
  gradients, the Adam update. Micro-batches as the trainer chooses them
  (``--grad_accum=auto``: none, the model has batch statistics); ``N``
  splits the batch, which changes the BatchNorm statistics as well as the
  speed. ``--inference``: ``Run.apply_fn("eval")`` (running statistics, no
  dropout).

The timings alternate, ours then theirs, for ``--rounds`` rounds after two
warm-up rounds (ours also compiles then); the table gives each side's median
and the ratio ours / official per round as median [min, max], the FLOPs of
our compiled step (XLA's count) and of the official step (torch's
FlopCounterMode: matmuls and convolutions only, a lower bound), each as a
fraction of the machine's measured peak (see `vs_official.measured_peak`).

Remaining asymmetries: the official loop's per-step bookkeeping (a
TensorBoard scalar, the learning-rate update in Python, the periodic
evaluation, image and checkpoint saving) and data loading are on neither
side; our step also returns the gradient and parameter norms and the loss
terms as metrics. Our learning-rate schedule counts its own steps from 0,
so our learning rate is the warm-up's (the arithmetic is the same); the
official one is the constant 4e-5 of that point in training. Our STN
samples the glimpses separably (two small matmuls per object, equal to
``grid_sample`` up to rounding; `ocjax.nn.stn`), which XLA counts as FLOPs
while FlopCounterMode does not count ``grid_sample``. With
``--inference`` ours also computes the model's evaluation outputs (the
attention segmentation and the argmax of the masks) besides the losses.

``--phase=2`` times the curriculum's phase 2 instead, at training step
20,000 (background frozen, the entropy term at full weight): the official
loop body reads the background (with its error channel) from the dataset,
precomputed by the frozen autoencoder, and Adam updates only ``netE`` and
``netG``; ours is the model's stage 0 computing the background (the frozen
autoencoder's forward pass, no gradient of it), the step our trainer runs
in phase 2 without its input cache. With ``--given_background`` ours
reads the same precomputed background as a batch entry ``background``
instead, as the official phase 2 does and as our trainer does when its
input cache is built (`ocjax.train.input_cache`: the background of each
example computed once; ``benchmarks/input_cache.py`` times the trainer
with and without it). In both, Adam updates only the object networks (the
autoencoder is the model's ``frozen_parameters`` of stage 0), as the
official phase 2's.

On a GPU (``--device=cuda``; ``auto``, the default, takes it when torch sees
one) the official networks and images live on CUDA (torch's default device,
and ``args.device`` of MF_config, as its training script sets it) and our
step runs on JAX's default backend; each batch's row is followed by both
sides' memory (XLA's buffers of our compiled step, torch's peak
allocation). ``--precision`` sets both sides' arithmetic as in
`vs_official`: ``float32`` (no TF32 anywhere), ``tf32`` or ``bfloat16``
(our ``model.dtype``; ``torch.autocast`` around the official forward pass
and losses). A GPU run for the record (one command, both modes):

    python benchmarks/vs_official_ast.py --official_dir=DIR --device=cuda \
        --batch=8,64 --rounds=10
    python benchmarks/vs_official_ast.py --official_dir=DIR --device=cuda \
        --batch=8,64 --rounds=10 --inference
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import sys
import types
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import vs_official as vs
# pylint: enable=g-import-not-at-top,wrong-import-position

HOW_TO_GET = """\
The official implementation is not part of ocjax (it is not ours to copy):
  git clone https://github.com/BrunoSauvalle/AST DIR
  pip install torch               # PyTorch is an optional extra: .[torch]
then: python benchmarks/vs_official_ast.py --official_dir=DIR
  (or set AST_OFFICIAL=DIR)"""

# The paper's ShapeStacks setting (Tables 6-8; official MF_config.py) that
# both sides are given; the rest is the two configs' shared defaults.
PRESET = "shapestacks"
ISOTROPIC_SCALING = True
BACKGROUND_COMPLEXITY = True  # background/config.py's default (ShapeStacks)
# A training step in phase 3 with the entropy term at full weight.
STEP = 30_000
# A training step in phase 2 (background frozen up to 30k), past the
# entropy warm-up (10k).
PHASE2_STEP = 20_000


def _ensure_transformers() -> None:
  """MF_models_encoder imports HuggingFace ``transformers`` for its Segformer
  generator, which the U-Net setting never uses: without the package, stand
  in names that fail if called."""
  try:
    import transformers  # pylint: disable=g-import-not-at-top,unused-import
    return
  except Exception:  # pylint: disable=broad-except
    pass

  class Absent:
    """A Segformer class of the absent package."""

    def __init__(self, *args, **kwargs):
      raise ImportError("transformers is not installed (the official "
                        "Segformer generator needs it).")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
      return cls()

  module = types.ModuleType("transformers")
  for name in ("SegformerModel", "SegformerConfig",
               "SegformerForSemanticSegmentation"):
    setattr(module, name, Absent)
  sys.modules["transformers"] = module


@contextlib.contextmanager
def _cpu_device_zero():
  """MF_config's defaults say ``torch.device(0)``, which recent torch
  refuses without an accelerator: while it is imported, device 0 is the
  CPU (the benchmark then sets ``args.device`` to torch's default device)."""
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device

  def cpu_for_zero(*args, **kwargs):
    if args == (0,) and not kwargs:
      return device("cpu")
    return device(*args, **kwargs)

  torch.device = cpu_for_zero
  try:
    yield
  finally:
    torch.device = device


def _official_losses(official_dir: str, args):
  """``MF_train.losses``, compiled from MF_train.py's own source."""
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(official_dir, "MF_train.py")
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  node = next(n for n in tree.body
              if isinstance(n, ast.FunctionDef) and n.name == "losses")
  namespace = {"torch": torch, "args": args}
  code = compile(ast.Module(body=[node], type_ignores=[]), path, "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  return namespace["losses"]


def official_model(official_dir: str, *, image_size: int, num_slots: int,
                   batch_size: int):
  """The official networks ``(netE, netG, BE, BG)`` and the config they
  read (MF_config.args, a module global, set here before building)."""
  import torch  # pylint: disable=g-import-not-at-top
  if official_dir not in sys.path:
    sys.path.insert(0, official_dir)
  _ensure_transformers()
  with _cpu_device_zero():
    import MF_config  # pylint: disable=g-import-not-at-top
  import MF_models_encoder  # pylint: disable=g-import-not-at-top
  import MF_models_renderer  # pylint: disable=g-import-not-at-top
  # background/models.py as a uniquely named module (the official code
  # imports it as "models", a name other checkouts use too).
  spec = importlib.util.spec_from_file_location(
      "_ast_official_background_models",
      os.path.join(official_dir, "background", "models.py"))
  background = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(background)
  # Torch's warnings about their calls (nested tensors, align_corners).
  warnings.filterwarnings("ignore", category=UserWarning,
                          module=r"MF_models_.*")
  # The renderer module holds the same object (from MF_config import args).
  args = MF_config.args
  settings = dict(MF_config.dataset_configs[PRESET], dataset_name=PRESET,
                  image_height=image_size, image_width=image_size,
                  max_set_size=num_slots, isotropic_scaling=ISOTROPIC_SCALING,
                  feature_map_generator_name="Unet", batch_size=batch_size,
                  background_model_training_scenario="curriculum_training",
                  device=torch.get_default_device())
  for name, value in settings.items():
    setattr(args, name, value)
  with contextlib.redirect_stdout(io.StringIO()):  # Their progress prints.
    nets = (MF_models_encoder.Encoder(args), MF_models_renderer.Renderer(args),
            background.Background_Encoder(image_size, image_size,
                                          BACKGROUND_COMPLEXITY),
            background.Background_Generator(image_size, image_size,
                                            BACKGROUND_COMPLEXITY))
  return nets, args


def official_background(nets, images):
  """``BG(BE(255 x)) / 255`` ``[B, 4, H, W]`` of the (frozen) background
  autoencoder, without gradients: what the official phase 2 reads from its
  dataset files."""
  import torch  # pylint: disable=g-import-not-at-top
  _, _, net_be, net_bg = nets
  net_be.eval()
  net_bg.eval()
  with torch.no_grad():
    return (1 / 255) * net_bg(net_be(255 * _torch_images(images)))


def official_step(official_dir: str, nets, args, images, *, inference: bool,
                  step: int = STEP, precision: str = "float32",
                  background=None):
  """A closure running one official training step (or forward pass), as
  MF_train.object_train's loop body (module doc), on torch's default device
  (`vs_official.set_device`): phase 3's, or with ``background``
  (`official_background`) phase 2's."""
  import torch  # pylint: disable=g-import-not-at-top
  net_e, net_g, net_be, net_bg = nets
  x = _torch_images(images)
  autocast = lambda: torch.autocast(  # pylint: disable=g-long-lambda
      x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
  losses = _official_losses(official_dir, args)
  trained = (net_g, net_e) + ((net_bg, net_be) if background is None else ())
  optimiser = torch.optim.Adam(
      [{"params": net.parameters()} for net in trained],
      lr=args.learning_rate, betas=(0.90, 0.98), eps=1e-9,
      weight_decay=args.object_detection_weight_decay)
  warmup_ratio = min(1, step / args.pixel_entropy_loss_full_activation_step
                     ) ** 2
  for net in nets:
    net.train(not inference)

  def loss_of_batch():
    with autocast():
      background_with_error = (background if background is not None else
                               (1 / 255) * net_bg(net_be(255 * x)))
      latents = net_e(x)
      recon, _, _, activation_layers = net_g(latents,
                                             background_with_error[:, :3])
      reconstruction, pixel_entropy = losses(recon, x, background_with_error,
                                             activation_layers)
    return reconstruction + (pixel_entropy * args.pixel_entropy_loss_weight
                             * warmup_ratio)

  def train():
    for net in trained:
      net.zero_grad()
    loss = loss_of_batch()
    loss.backward()
    optimiser.step()
    return float(loss.detach())

  def forward():
    with torch.no_grad():
      return float(loss_of_batch())

  return forward if inference else train


def _torch_images(images):
  """``images`` [B, H, W, 3] as torch's NCHW on its default device."""
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(images.transpose(
      0, 3, 1, 2))).to(torch.get_default_device())


def our_config(*, image_size: int, num_slots: int, batch_size: int,
               grad_accum: int | str, precision: str = "float32",
               phase: int = 3):
  """``experiments/ast_seg.py:shapestacks`` with the compared settings
  (phase 3: the background trained jointly; phase 2: the curriculum)."""
  from experiments import common  # pylint: disable=g-import-not-at-top
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  config = run_lib.load_experiment(f"experiments/ast_seg.py:{PRESET}")
  with config.unlocked():
    common.set_fields(config, {
        "data.image_size": image_size,
        "model.num_slots": num_slots,
        "model.isotropic_scaling": ISOTROPIC_SCALING,
        "model.feature_generator": "unet",
        "model.background_training": "joint" if phase == 3 else "curriculum",
        "model.background_complexity": BACKGROUND_COMPLEXITY,
        "model.dtype": vs.model_dtype(precision),
        "train.batch_size": batch_size})
    if grad_accum != "auto":
      config.train.grad_accum_steps = int(grad_accum)
  return config


def our_step(config, images, *, inference: bool, step: int = STEP,
             background=None):
  """Our jitted training step (or forward pass) at training step ``step``
  (`vs_official.step_closure`; ``background`` ``[B, H, W, 4]``: the batch
  entry): the closure, XLA's FLOP count and the micro-batches."""
  extra = None if background is None else {"background": background}
  return vs.step_closure(config, images, inference=inference, step=step,
                         extra=extra)


def describe(config, *, inference: bool, phase: int = 3,
             given_background: bool = False) -> str:
  """The compared model, from our config (the official one is set alike)."""
  from ocjax import models  # pylint: disable=g-import-not-at-top
  m, o = config.model, config.optimizer
  widths = tuple(m.unet_widths) or "Table 8"
  what = (f"{'complex' if m.background_complexity else 'simple'} "
          f"background, ")
  if inference:
    what += "evaluation mode"
  elif phase == 3:
    what += f"trained jointly (phase 3, step {STEP})"
  else:
    what += (f"frozen (phase 2, step {PHASE2_STEP}; ours "
             + ("reads it precomputed, as the official code"
                if given_background else "computes it, theirs reads it")
             + ")")
  if not inference:
    what += (f", Adam lr {o.learning_rate:g} betas {o.b1:g} / {o.b2:g} eps "
             f"{o.eps:g}")
  return (f"{m.image_size}x{m.image_size}, K={m.num_slots}, "
          f"{'isotropic' if m.isotropic_scaling else 'anisotropic'}, "
          f"U-Net {widths}, transformer d={m.transformer_dim} "
          f"{m.transformer_heads} heads ff {m.transformer_feedforward} "
          f"{m.transformer_layers} layers dropout {m.transformer_dropout}, "
          f"z_what {m.z_what_dim}, glimpse "
          f"{models.build(m).resolved_glimpse_size}, {what}")


def parts(official_dir: str, images, *, rounds: int,
          precision: str = "float32") -> list[str]:
  """Forward passes of the two big networks alone, evaluation mode, both
  sides alternating: the background autoencoder ``BG(BE(255 x))`` and the
  feature-map generator (U-Net); one line each, ours / official."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  b, size = images.shape[0], images.shape[1]
  nets, _ = official_model(official_dir, image_size=size, num_slots=6,
                           batch_size=b)
  net_e, _, net_be, net_bg = nets
  for net in nets:
    net.eval()
  x_t = _torch_images(images)
  from ocjax import run as run_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.build(our_config(image_size=size, num_slots=6, batch_size=b,
                                 grad_accum="auto", precision=precision))
  variables = run.init_state().variables()
  model, x = run.model, jax.numpy.asarray(images)
  ours = {
      "background autoencoder": jax.jit(lambda v, x: model.apply(
          v, x * 255, method=lambda m, y: m.background_ae(y))),
      "U-Net": jax.jit(lambda v, x: model.apply(
          v, x, method=lambda m, y: m.feature_and_attention_map_generator(
              y, train=False))),
  }
  theirs = {
      "background autoencoder": lambda: net_bg(net_be(255 * x_t)),
      "U-Net": lambda: net_e.feature_and_attention_map_generator(x_t),
  }
  lines = []
  for name, fn in ours.items():
    def mine(fn=fn):
      jax.block_until_ready(fn(variables, x))

    def official(name=name):
      with torch.no_grad(), torch.autocast(
          x_t.device.type, dtype=torch.bfloat16,
          enabled=precision == "bfloat16"):
        theirs[name]()
      if x_t.device.type == "cuda":
        torch.cuda.synchronize()

    t_ours, t_theirs = [], []
    for _ in range(2):  # warm-up, compilation
      mine()
      official()
    for _ in range(rounds):
      t_ours.append(vs.timed(mine))
      t_theirs.append(vs.timed(official))
    ratios = np.asarray(t_ours) / np.asarray(t_theirs)
    lines.append(f"  {name}: ours {np.median(t_ours):.3f} s, official "
                 f"{np.median(t_theirs):.3f} s, {np.median(ratios):.2f}x "
                 f"[{ratios.min():.2f}, {ratios.max():.2f}]")
  return lines


def main(argv=None) -> int:
  p = vs.arg_parser(__doc__.splitlines()[0], official_env="AST_OFFICIAL",
                   num_slots=6)
  p.add_argument("--parts", action="store_true",
                 help="also time the background autoencoder and the U-Net "
                 "alone (forward, evaluation mode) at each batch")
  p.add_argument("--phase", type=int, default=3, choices=(2, 3),
                 help="the curriculum phase of the training step (module "
                 "doc)")
  p.add_argument("--given_background", action="store_true",
                 help="phase 2: ours reads the precomputed background too")
  args = p.parse_args(argv)
  if args.inference and args.phase != 3:
    p.error("--phase=2 times a training step; --inference is the same "
            "forward pass in both phases")
  if args.given_background and args.phase != 2:
    p.error("--given_background applies to --phase=2 (the official phase "
            "2 reads precomputed backgrounds)")
  if not args.official_dir or not os.path.isfile(
      os.path.join(args.official_dir, "MF_models_encoder.py")):
    print(HOW_TO_GET, file=sys.stderr)
    return 2
  torch = vs.import_torch(args.threads)
  if torch is None:
    print(HOW_TO_GET, file=sys.stderr)
    return 2
  try:
    vs.set_device(args.device, torch)
  except ValueError as e:  # --device=cuda without a GPU
    print(e, file=sys.stderr)
    return 2
  vs.set_precision(args.precision, torch)
  what = "forward pass" if args.inference else "training step"
  peak = vs.measured_peak(args.precision)
  batches = [int(v) for v in args.batch.split(",")]
  print(f"AST-Seg {what}, " + describe(our_config(
      image_size=args.image_size, num_slots=args.num_slots,
      batch_size=batches[0], grad_accum=args.grad_accum, phase=args.phase),
      inference=args.inference, phase=args.phase,
      given_background=args.given_background))
  print(vs.machine(torch, peak, args.precision))
  print(vs.TABLE_HEAD)
  rng = np.random.default_rng(0)
  for b in batches:
    images = rng.uniform(size=(b, args.image_size, args.image_size, 3)
                         ).astype(np.float32)
    torch.manual_seed(0)
    nets, official_args = official_model(
        args.official_dir, image_size=args.image_size,
        num_slots=args.num_slots, batch_size=b)
    step, background = STEP, None
    if args.phase == 2:
      step, background = PHASE2_STEP, official_background(nets, images)
    theirs = official_step(args.official_dir, nets, official_args, images,
                           inference=args.inference, step=step,
                           precision=args.precision, background=background)
    ours, flops, accum = our_step(
        our_config(image_size=args.image_size, num_slots=args.num_slots,
                   batch_size=b, grad_accum=args.grad_accum,
                   precision=args.precision, phase=args.phase),
        images, inference=args.inference, step=step,
        background=(background.float().cpu().numpy().transpose(0, 2, 3, 1)
                    if args.given_background else None))
    if torch.cuda.is_available():
      torch.cuda.reset_peak_memory_stats()
    t_ours, t_theirs, their_flops = vs.compare(ours, theirs, args.rounds)
    print(vs.table_row(b, t_ours, t_theirs, flops, their_flops, peak, accum),
          flush=True)
    if line := vs.memory(ours.compiled, torch):
      print(line, flush=True)
    if args.parts:
      print("\n".join(parts(args.official_dir, images, rounds=args.rounds,
                             precision=args.precision)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
