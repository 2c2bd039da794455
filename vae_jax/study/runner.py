"""The article's autoencoder study: which runs it needs, training or reusing them, and measuring them.

    python -m experiments.autoencoder_study --data idx:../shared/data/mnist --out DIR

trains every (model, latent size) of `StudyConfig` with `vae_jax.training.run.train_and_evaluate` in
DIR/runs/<name>/ (a complete run is reused, an interrupted one resumed), then measures on the
binarized test digits:

- reconstruction: decode(encode(x)) with the posterior mean for VAEs: BCE in nats per image and
  the pixel error rate (% of the 784 pixels wrong when a probability > 0.5 counts as 1); for VAEs
  the analytic KL(q(z|x) || N(0, I)) and the active units (Cov_x E_q[z_i] > 0.01, Burda et al.);
- loss choice: one model (conv_ae) trained with bce, l2 and l1 at the focus latent size;
- denoising: models trained with `denoise=p`, on test inputs with each pixel flipped with
  probability p, against the clean digits; the models trained on clean digits alongside;
- creativity at the focus latent size: decoded z ~ N(0, I), decoded draws of a Gaussian mixture
  fitted to the training codes, decoded midpoints of two test digits' codes, and reconstructions
  of training digits as a reference, each scored by FCD and the MNIST score of a classifier trained
  here (`vae_jax.study.classifier`); real training digits against the test digits give the FCD floor.

The models come from the model registry (`vae_jax.nn.models.create_model`, `Config.model`,
`Config.objective`, `Config.denoise`); `probe_models` checks every run's Config before any
training, so an unknown model or a model/objective mismatch fails at once, naming the run.
"""

import dataclasses
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from vae_jax import interrupts
from vae_jax.study import classifier as classifier_lib
from vae_jax import data as data_lib
from vae_jax.study import latent, sample_quality, pictures as study_pictures
from vae_jax.nn import losses
from vae_jax.training import run
from vae_jax.nn import models as models_lib
from vae_jax.nn import resolve
from vae_jax.batched import map_batches
from vae_jax.training.checkpoints import Checkpoints
from vae_jax.config import Config, get_config
from vae_jax.errors import UserError
from vae_jax.study.config import StudyConfig, quick  # pylint: disable=unused-import  # re-exported

VAE_DEFAULT_OBJECTIVE, AE_DEFAULT_OBJECTIVE = "elbo", "bce"
# (convolutional, multilayer perceptron) pairs of the same kind, for claim 3.
CONV_MLP_PAIRS = (("conv_ae", "mlp_ae"), ("cvae", "mlp"))
# (plain autoencoder, VAE) pairs of the same architecture, for the creativity claim.
AE_VAE_PAIRS = (("conv_ae", "cvae"), ("mlp_ae", "mlp"))
ACTIVE_UNIT_THRESHOLD = 0.01
SAMPLERS = ("prior", "gmm", "midpoint", "reconstruction")
PICTURE_DIGITS = 36     # digits per sampler in the creativity grid
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 5, 10


# ---------------------------------------------------------------- the runs

class RunSpec(NamedTuple):
  """One training run of the study."""
  name: str
  model: str
  objective: str
  latent: int
  denoise: float = 0.0


def run_name(model: str, objective: str, latent_dim: int, denoise: float = 0.0) -> str:
  name = f"{model}_{objective}_L{latent_dim}"
  return f"{name}_denoise{denoise:g}" if denoise else name


def default_objective(stochastic: bool) -> str:
  return VAE_DEFAULT_OBJECTIVE if stochastic else AE_DEFAULT_OBJECTIVE


def plan(study: StudyConfig, stochastic: dict[str, bool]) -> list[RunSpec]:
  """Every run the study needs, each once, in training order; `stochastic[model]`: is it a VAE."""
  specs = {}

  def add(model, objective, latent_dim, denoise=0.0):
    spec = RunSpec(run_name(model, objective, latent_dim, denoise), model, objective, latent_dim,
                   denoise)
    specs.setdefault(spec.name, spec)

  for model in study.models:
    for latent_dim in study.latent_sizes:
      add(model, default_objective(stochastic[model]), latent_dim)
  for objective in study.losses:
    add(study.loss_model, objective, study.focus_latent)
  for model in study.denoise_models:
    add(model, default_objective(stochastic[model]), study.focus_latent)
    for p in study.noise_levels:
      add(model, default_objective(stochastic[model]), study.focus_latent, p)
  return list(specs.values())


def run_config(study: StudyConfig, spec: RunSpec) -> Config:
  """The main job's Config of one run."""
  return dataclasses.replace(
      get_config(), data=study.data, train_size=study.train_size, batch_size=study.batch_size,
      learning_rate=study.learning_rate, epochs=study.epochs, seed=study.seed,
      latent_dim=spec.latent, model=spec.model, objective=spec.objective, denoise=spec.denoise)


def probe_models(study: StudyConfig) -> dict[str, bool]:
  """{model: stochastic} for every model the study names, after validating every run's Config.

  The registry refuses an unknown model or objective, an AE objective (bce, l2, l1) for a VAE and
  elbo for an AE, so a bad study fails here, before any training, naming the run.
  """
  names = list(dict.fromkeys((*study.models, study.loss_model, *study.denoise_models)))
  stochastic = {name: bool(models_lib.get_model_class(name).stochastic) for name in names}
  for spec in plan(study, stochastic):
    try:
      resolve.check(run_config(study, spec))
    except UserError as e:
      raise UserError(f"run {spec.name} (model {spec.model!r}, objective {spec.objective!r}): "
                      f"{e}") from None
  return stochastic


def _latest_checkpoint(workdir: str) -> int | None:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  checkpoints = Checkpoints(directory)
  try:
    return checkpoints.latest_epoch()
  finally:
    checkpoints.close()


def run_status(workdir: str, config) -> str:
  """'new' (nothing there), 'complete' (config matches, `epochs` metric rows and that checkpoint)
  or 'resume' (same settings, fewer epochs done); a workdir of other settings is a UserError."""
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return "new"
  config_path = os.path.join(workdir, run.CONFIG_FILE)
  if not os.path.exists(config_path):
    raise UserError(f"{workdir} is not empty but holds no run ({run.CONFIG_FILE} not found); "
                    "remove it or choose another --out")
  with open(config_path) as f:
    saved = json.load(f)
  wanted = json.loads(json.dumps(dataclasses.asdict(config)))
  differ = sorted(k for k in saved.keys() | wanted.keys()
                  if k not in run.RESUMABLE_CHANGES and saved.get(k) != wanted.get(k))
  if differ:
    changes = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in differ)
    raise UserError(f"{workdir} holds a run with other settings ({changes}); remove it or "
                    "choose another --out")
  epoch = _latest_checkpoint(workdir)
  if epoch is not None and epoch > config.epochs:
    raise UserError(f"{workdir} holds a run of {epoch} epochs, more than --epochs {config.epochs}; "
                    "remove it or choose another --out")
  epochs_done = [r.get("epoch") for r in run.read_metrics(workdir)]
  if epoch == config.epochs and epochs_done == list(range(1, config.epochs + 1)):
    return "complete"
  return "resume"


def ensure_run(config, workdir: str) -> str:
  """Trains the run in `workdir` unless it is complete; returns 'reused', 'resumed' or 'trained'."""
  status = run_status(workdir, config)
  if status == "complete":
    return "reused"
  run.train_and_evaluate(config, workdir, resume=status == "resume")
  return "resumed" if status == "resume" else "trained"


def run_timing(workdir: str) -> dict:
  """Seconds and median training images/s of a run, from its metrics.jsonl."""
  rows = run.read_metrics(workdir)
  speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
  return {"seconds": float(sum(r.get("seconds", 0.0) for r in rows)),
          "images_per_sec": float(np.median(speeds)) if speeds else None,
          "epochs": len(rows)}


# ---------------------------------------------------------------- measurements of one model

def _code(model, x):
  """The code of x: the posterior mean for a VAE, z for a plain AE; and logvar (None for an AE)."""
  code, logvar = model.encode(x.astype(jnp.float32))
  return code, logvar


def _probs(model, z):
  return jax.nn.sigmoid(model.decode(z).astype(jnp.float32))


def _per_example(model, x):
  """BCE (nats), wrong pixels, analytic KL (0 for an AE) and the code of each {0,1} image."""
  code, logvar = _code(model, x)
  logits = model.decode(code).astype(jnp.float32)
  target = x.astype(jnp.float32)
  bce = -losses.bernoulli_log_likelihood(logits, target)
  wrong = jnp.sum(((logits > 0).astype(jnp.float32) != target).reshape(x.shape[0], -1), axis=-1)
  kl = (losses.kl_analytic(code.astype(jnp.float32), logvar.astype(jnp.float32))
        if logvar is not None else jnp.zeros(x.shape[0]))
  return bce, wrong, kl, code


class Jitted:
  """A model's measuring functions, each jitted once over its state (pass it for the model)."""

  def __init__(self, model):
    self.model = model
    graphdef, state = nnx.split(model)

    def jit(fn):
      compiled = jax.jit(lambda state_, *args: fn(nnx.merge(graphdef, state_), *args))
      return lambda *args: compiled(state, *args)

    self.code = jit(lambda m, x: _code(m, x)[0])
    self.probs = jit(_probs)
    self.reconstruct = jit(lambda m, x: _probs(m, _code(m, x)[0]))
    self.per_example = jit(_per_example)


def jitted(model) -> Jitted:
  return model if isinstance(model, Jitted) else Jitted(model)


def encode_codes(model, x_u8, batch_size: int = 500) -> np.ndarray:
  """(N, latent_dim) codes (posterior means for VAEs) of binarized images."""
  return map_batches(jitted(model).code, np.asarray(x_u8), batch_size=batch_size)


def decode_probs(model, z, batch_size: int = 500) -> np.ndarray:
  """(N, 28, 28, 1) decoder probabilities of (N, latent_dim) codes."""
  return map_batches(jitted(model).probs, np.asarray(z, np.float32), batch_size=batch_size)


def reconstruct_probs(model, x_u8, batch_size: int = 500) -> np.ndarray:
  """decode(encode(x)) probabilities, with the posterior mean for VAEs."""
  return map_batches(jitted(model).reconstruct, np.asarray(x_u8), batch_size=batch_size)


def reconstruction_metrics(model, x_u8, batch_size: int = 500) -> dict:
  """BCE (nats/image) and pixel error (%) of decode(encode(x)) against the {0,1} targets x_u8;
  for a VAE also the mean analytic KL and the active units."""
  fns = jitted(model)
  x_u8 = np.asarray(x_u8)
  bce, wrong, kl, codes = map_batches(fns.per_example, x_u8, batch_size=batch_size)
  pixels = int(np.prod(x_u8.shape[1:]))
  out = {"bce": float(np.mean(bce)), "pixel_error": float(100.0 * np.mean(wrong) / pixels)}
  if fns.model.stochastic:
    activity = np.var(codes.astype(np.float64), axis=0, ddof=1)
    out.update(kl=float(np.mean(kl)),
               active_units=int(np.sum(activity > ACTIVE_UNIT_THRESHOLD)),
               latent_dim=int(codes.shape[1]))
  return out


def flip_pixels(x_u8, p: float, seed: int) -> np.ndarray:
  """x with each pixel flipped independently with probability p (a fixed draw for seed, p): the
  noise `Config.denoise = p` trains with (`vae_jax.training.train.denoised_input`), drawn here with numpy."""
  rng = np.random.default_rng([seed, int(round(p * 1_000_000))])
  return (np.asarray(x_u8) ^ (rng.random(np.shape(x_u8)) < p)).astype(np.uint8)


def pixel_error(probs, target_u8) -> float:
  """% of pixels where (probability > 0.5) differs from the {0,1} target."""
  return float(100.0 * np.mean((np.asarray(probs) > 0.5) != (np.asarray(target_u8) > 0)))


def _pairs(n_items: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """n_pairs index pairs (a, b) with a != b."""
  a = rng.integers(0, n_items, n_pairs)
  b = (a + 1 + rng.integers(0, max(n_items - 1, 1), n_pairs)) % n_items
  return a, b


def sampler_images(model, train_x_u8, test_x_u8, n: int, seed: int, components: int) -> dict:
  """{sampler: (n, 28, 28, 1) probabilities} of the study's samplers, and interpolation rows.

  prior: decode(z ~ N(0, I)); gmm: decode(draws of a Gaussian mixture fitted to the training
  codes); midpoint: decode((code(a) + code(b)) / 2) for random pairs of test digits;
  reconstruction: decode(code(x)) for n training digits.
  """
  model = jitted(model)
  rng = np.random.default_rng([seed, 7])
  train_codes = encode_codes(model, train_x_u8)
  test_codes = encode_codes(model, test_x_u8)
  latent_dim = train_codes.shape[1]
  a, b = _pairs(len(test_x_u8), n, rng)
  recon_index = rng.permutation(len(train_x_u8))[:n]
  out = {
      "prior": decode_probs(model, rng.standard_normal((n, latent_dim)).astype(np.float32)),
      "gmm": decode_probs(model, latent.gmm_samples(train_codes, n, components, seed)),
      "midpoint": decode_probs(model, 0.5 * (test_codes[a] + test_codes[b])),
      "reconstruction": decode_probs(model, train_codes[recon_index]),
  }
  ends_a, ends_b = a[:INTERPOLATION_PAIRS], b[:INTERPOLATION_PAIRS]
  path = latent.interpolate(test_codes[ends_a], test_codes[ends_b], INTERPOLATION_STEPS)
  decoded = decode_probs(model, path.reshape(-1, latent_dim)).reshape(
      INTERPOLATION_PAIRS, INTERPOLATION_STEPS, 28, 28, 1)
  originals = test_x_u8.astype(np.float32)
  out["interpolation"] = np.concatenate(
      [originals[ends_a][:, None], decoded, originals[ends_b][:, None]], axis=1)
  return out


class Scorer:
  """Sample-quality numbers against a fixed reference set (the test digits)."""

  def __init__(self, model, reference_images):
    self.model = model
    self.features, self.logits = classifier_lib.embed(model, reference_images)
    self.stats = sample_quality.gaussian_stats(self.features)
    self.logit_stats = sample_quality.gaussian_stats(self.logits)

  def score(self, images) -> dict:
    """fcd (penultimate features), fcd_logits (TF-GAN's default layer) and the MNIST score."""
    features, logits = classifier_lib.embed(self.model, images)
    return {"fcd": sample_quality.frechet_distance_from_stats(
                *sample_quality.gaussian_stats(features), *self.stats),
            "fcd_logits": sample_quality.frechet_distance_from_stats(
                *sample_quality.gaussian_stats(logits), *self.logit_stats),
            **sample_quality.mnist_score(sample_quality.softmax(logits)), "n": len(images)}


# ---------------------------------------------------------------- the whole study

def normalize_data(spec: str) -> str:
  """idx:DIR with DIR made absolute, so runs reused from another working directory match."""
  return f"idx:{os.path.abspath(spec[4:])}" if spec.startswith("idx:") and len(spec) > 4 else spec


def machine() -> dict:
  """Backend, devices, CPUs, platform and the versions the numbers were measured with."""
  import flax  # pylint: disable=import-outside-toplevel
  import platform  # pylint: disable=import-outside-toplevel
  return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(jax.lib, "__version__", None) or jax.__version__,
          "flax": flax.__version__, "numpy": np.__version__}


def run_study(study: StudyConfig, out: str) -> dict:
  """Trains (or reuses) every run, measures them, draws the grids; returns the results dict.

  `vae_jax.study.report.write_report(results, out)` turns it into report.md, report.json, plots.
  """
  study.validate()
  study = dataclasses.replace(study, data=normalize_data(study.data))
  start = time.perf_counter()
  stochastic = probe_models(study)
  specs = plan(study, stochastic)
  dataset = data_lib.load(study.data)
  if len(dataset.test_images) < 2:
    raise UserError(f"{dataset.name} has {len(dataset.test_images)} test images; the study needs 2")
  train_x = data_lib.binarize(dataset.take_train(study.train_size).train_images)
  test_x = data_lib.binarize(dataset.test_images)
  if len(train_x) < study.gmm_components:
    raise UserError(f"{len(train_x)} training digits cannot fit a {study.gmm_components}-component "
                    "Gaussian mixture")
  os.makedirs(out, exist_ok=True)
  clf, clf_info = classifier_lib.cached_classifier(
      os.path.join(out, "classifier"), dataset,
      classifier_lib.ClassifierConfig(epochs=study.classifier_epochs, seed=study.seed))

  runs = {}
  bar = tqdm(specs, desc="runs", unit="run")
  for spec in bar:
    bar.set_postfix_str(spec.name)
    workdir = os.path.join(out, "runs", spec.name)
    try:
      outcome = ensure_run(run_config(study, spec), workdir)
    except interrupts.Interrupted as e:
      raise interrupts.Interrupted(e.signum, e.epoch, (
          f"interrupted in run {spec.name} at epoch {e.epoch}: its complete epochs and every "
          "complete run are kept; the same command again continues")) from None
    runs[spec.name] = {**spec._asdict(), "outcome": outcome, **run_timing(workdir)}
  bar.close()

  models = {}

  def model_of(name):  # called before each measurement: a safe point
    interrupts.stop("interrupted while measuring: every run is kept; the same command again "
                    "measures them without training")
    if name not in models:
      models[name] = Jitted(run.restore_model(os.path.join(out, "runs", name))[2])
    return models[name]

  results = {"study": dataclasses.asdict(study), "data": dataset.name,
             "train_images": len(train_x), "test_images": len(test_x), "classifier": clf_info,
             "runs": runs, "stochastic": stochastic}
  eval_bar = tqdm(total=len(specs), desc="measuring", unit="run")

  # Bottleneck sizes and loss choice: reconstruction of the test digits.
  reconstruction = {}
  for spec in specs:
    if not spec.denoise:
      reconstruction[spec.name] = {**spec._asdict(), "stochastic": stochastic[spec.model],
                                   **reconstruction_metrics(model_of(spec.name), test_x)}
      eval_bar.update()
  default = {m: default_objective(stochastic[m]) for m in stochastic}
  results["bottleneck"] = [reconstruction[run_name(m, default[m], l)]
                           for m in study.models for l in study.latent_sizes]
  results["loss_choice"] = [reconstruction[run_name(study.loss_model, o, study.focus_latent)]
                            for o in study.losses]

  # Denoising.
  denoising = []
  noisy_examples = {}
  for p in study.noise_levels:
    noisy = flip_pixels(test_x, p, study.seed)
    noisy_examples[p] = {"input": noisy[:8].astype(np.float32)}
    for m in study.denoise_models:
      for trained in (p, 0.0):
        name = run_name(m, default[m], study.focus_latent, trained)
        probs = reconstruct_probs(model_of(name), noisy)
        denoising.append({"model": m, "noise": p, "trained_noise": trained, "run": name,
                          "pixel_error": pixel_error(probs, test_x),
                          "input_error": pixel_error(noisy, test_x)})
        if trained:
          noisy_examples[p][m] = probs[:8]
          eval_bar.update()
  results["denoising"] = denoising

  # Creativity and sample quality at the focus latent size.
  n = study.num_samples
  real_index = np.random.default_rng([study.seed, 5]).permutation(len(test_x))[:n]
  scorer = Scorer(clf, test_x[real_index].astype(np.float32))
  floor_index = np.random.default_rng([study.seed, 6]).permutation(
      len(dataset.train_images))[:len(real_index)]
  real_train = data_lib.binarize(dataset.train_images[floor_index]).astype(np.float32)
  quality = {"reference": {"images": "binarized test digits", "n": len(real_index)},
             "floor": {"what": "binarized training digits", **scorer.score(real_train)},
             "real_test": sample_quality.mnist_score(sample_quality.softmax(scorer.logits)),
             "rows": []}
  grids = {}
  for m in study.models:
    name = run_name(m, default[m], study.focus_latent)
    images = sampler_images(model_of(name), train_x, test_x, n, study.seed, study.gmm_components)
    for sampler in SAMPLERS:
      quality["rows"].append({"model": m, "stochastic": stochastic[m], "sampler": sampler,
                              "run": name, **scorer.score(images[sampler])})
    grids[m] = {k: v[:PICTURE_DIGITS] if k != "interpolation" else v for k, v in images.items()}
  results["sample_quality"] = quality
  eval_bar.close()

  # Pictures.
  pictures_dir = os.path.join(out, "pictures")
  os.makedirs(pictures_dir, exist_ok=True)
  originals = test_x[:10].astype(np.float32)
  recon_rows = {m: [reconstruct_probs(model_of(run_name(m, default[m], l)), test_x[:10])
                    for l in study.latent_sizes] for m in study.models}
  results["pictures"] = {
      "reconstructions": study_pictures.reconstruction_grid(
          os.path.join(pictures_dir, "reconstructions.png"), originals, recon_rows,
          study.latent_sizes),
      "samples": study_pictures.sampler_grid(
          os.path.join(pictures_dir, "samples.png"), grids, study.focus_latent),
      "interpolations": study_pictures.interpolation_grid(
          os.path.join(pictures_dir, "interpolations.png"),
          {m: g["interpolation"] for m, g in grids.items()}, study.focus_latent),
      "denoising_examples": study_pictures.denoising_grid(
          os.path.join(pictures_dir, "denoising_examples.png"), test_x[:8].astype(np.float32),
          noisy_examples, study.denoise_models),
  }
  results["pictures"] = {k: os.path.relpath(v, out) for k, v in results["pictures"].items()}
  results["seconds"] = time.perf_counter() - start
  results["machine"] = machine()
  return results

