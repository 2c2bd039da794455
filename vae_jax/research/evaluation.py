"""`evaluate_run(workdir, settings)`: a trained run's test-set likelihood, written to its workdir.

The newest checkpoint of the run is evaluated on the first `test_size` images of its test set,
binarized as the run was trained. The report goes to `evaluation.json`; an earlier report is never
overwritten silently: a report with other settings (k, test size, seed, data, binarization,
checkpoint epoch, GEMM dtype) goes to `evaluation_k{K}_n{N}_s{S}.json` instead (with
`_bfloat16` before `.json` for bfloat16 GEMMs), and a report whose file already exists is refused
unless `force` is set. An evaluation stopped by a signal keeps its images' terms in
`evaluation_k{K}_n{N}_s{S}.partial.npz`; the same settings again continue from them (every image's
samples depend only on the seed and its index, so the numbers are the same).
"""

import dataclasses
import json
import math
import os
import sys
import time
import warnings

import flax
import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vae_jax import data as data_lib
from vae_jax import interrupts
from vae_jax.research import likelihood
from vae_jax.training import run
from vae_jax.training import workdir as workdir_lib
from vae_jax.errors import UserError

REPORT_FILE = "evaluation.json"
# The settings a report's numbers depend on; chunk and batch change only the rounding.
IDENTITY = ("iw_samples", "test_size", "seed", "data", "binarize", "checkpoint_epoch", "dtype")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to evaluate and how; None means the run's own choice (data) or everything (test_size)."""
  iw_samples: int = 5000       # k: importance samples per image
  test_size: int | None = None  # the first N test images (None: all)
  seed: int = 0                # fixes every sample: the same seed gives the same numbers
  chunk: int = 500             # latent samples per image in one decoder call
  batch: int = 0               # images per call; 0: `default_batch`
  data: str | None = None      # --data spelling; None: the run's config.data
  # The GEMMs' input dtype (float32 accumulation either way); None: the run's own --dtype.
  # 'bfloat16' is ~1.4x faster on CPUs with AVX-512 BF16 and moves the NLL by ~0.01 nats
  # (docs/likelihood.md); published numbers are float32's.
  dtype: str | None = None

  def validate(self) -> None:
    for name, low in (("iw_samples", 1), ("chunk", 1), ("batch", 0), ("test_size", 1)):
      value = getattr(self, name)
      if value is not None and value < low:
        raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if self.dtype is not None and self.dtype not in DTYPES:
      raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


def default_batch(backend: str, dtype: str = "float32") -> int:
  """Images per call: on CPUs the fastest measured through this CLI at k = 5000 and chunk 500
  (float32 GEMMs of 1,000 rows, bfloat16 of 2,000; benchmarks/results/cpu_small_models_is_eval_epyc_*
  and is_eval_bf16_batch_epyc_*), 20 on accelerators."""
  if backend != "cpu":
    return 20
  return 2 if dtype == "float32" else 4


def _dtype_suffix(dtype: str) -> str:
  """What report names add for GEMMs of another dtype than float32 (`_bfloat16`)."""
  return "" if dtype == "float32" else f"_{dtype}"


def _stem(identity: dict) -> str:
  """evaluation_k{K}_n{N}_s{S}, and _bfloat16 for bfloat16 GEMMs."""
  return ("evaluation_k{iw_samples}_n{test_size}_s{seed}".format(**identity)
          + _dtype_suffix(identity["dtype"]))


def _same_identity(earlier: dict, identity: dict, run_dtype: str) -> bool:
  """Whether a report's settings are `identity`; one from before the dtype was recorded was
  computed in the run's own dtype."""
  return all(earlier.get(key, run_dtype if key == "dtype" else None) == identity[key]
             for key in IDENTITY)


def report_path(workdir: str, settings: dict, force: bool, run_dtype: str = "float32") -> str:
  """Where this evaluation's report goes; refuses to replace an existing one unless `force`."""
  path = os.path.join(workdir, REPORT_FILE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        earlier = json.load(f).get("settings", {})
    except (OSError, ValueError, AttributeError):
      earlier = None
    if earlier is None or not _same_identity(earlier, settings, run_dtype):
      path = os.path.join(workdir, _stem(settings) + ".json")
  if os.path.exists(path) and not force:
    raise UserError(f"{path} exists (an evaluation with these settings); pass --force to "
                    "replace it")
  return path


def _write(path: str, report: dict, force: bool) -> None:
  text = json.dumps(report, indent=2) + "\n"
  if force:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
    return
  try:
    with open(path, "x") as f:
      f.write(text)
  except FileExistsError:
    raise UserError(f"{path} appeared during the evaluation; pass --force to replace it") from None


def partial_path(workdir: str, identity: dict) -> str:
  return os.path.join(workdir, _stem(identity) + ".partial.npz")


def _load_partial(path: str, meta: dict) -> dict:
  """The terms an interrupted evaluation with the same settings kept ({} if none, or others)."""
  try:
    with np.load(path) as f:
      if json.loads(str(f["meta"])) != meta:
        warnings.warn(f"{path} holds an interrupted evaluation with another --chunk or --batch "
                      "(or checkpoint); every image is evaluated again")
        return {}
      return {name: f[name] for name in f.files if name != "meta"}
  except (OSError, ValueError, KeyError):
    return {}


def _save_partial(path: str, meta: dict, terms: dict) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, meta=json.dumps(meta), **terms)
  os.replace(tmp, path)


def _per_image_terms(model, x_u8: np.ndarray, settings: Settings, batch: int, stochastic: bool,
                     partial: str, meta: dict):
  """Every image's terms (see likelihood.evaluate_batch), with a progress bar; and the timing.

  Those of `partial` (an interrupted evaluation's, same `meta`) are reused; on a signal, the
  terms so far are written to `partial` and `Interrupted` is raised.
  """
  graphdef, state = nnx.split(model)
  key = jax.random.key(settings.seed)
  n = len(x_u8)
  statics = dict(stochastic=stochastic, k=settings.iw_samples, chunk=settings.chunk)

  def inputs(start):
    index = np.minimum(np.arange(start, start + batch), n - 1)  # the last batch repeats image n-1
    return x_u8[index].astype(np.float32), index.astype(np.int32)

  start_compile = time.perf_counter()
  compiled = likelihood.evaluate_batch.lower(graphdef, state, *inputs(0), key, **statics).compile()
  compile_seconds = time.perf_counter() - start_compile
  kept = _load_partial(partial, meta)
  parts = [kept] if kept else []
  done = len(kept["rec"]) if kept else 0
  pending = []

  def consume(bar):
    start, out = pending.pop(0)
    out = jax.device_get(out)
    size = min(batch, n - start)
    parts.append({name: value[:size] for name, value in out.items()})
    bar.update(size)

  start_time = time.perf_counter()
  with tqdm(total=n, initial=done, unit="image", desc="evaluate", file=sys.stderr,
            dynamic_ncols=True) as bar:
    for start in range(done, n, batch):
      if interrupts.requested():
        break
      pending.append((start, compiled(state, *inputs(start), key)))
      if len(pending) > 1:  # read one call behind, so the device does not wait for the host
        consume(bar)
    while pending:
      consume(bar)
  seconds = time.perf_counter() - start_time
  if not parts:  # a signal before the first call
    interrupts.stop("interrupted before the first test image: nothing to keep")
  terms = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
  if len(terms["rec"]) < n:  # stopped by a signal
    _save_partial(partial, meta, terms)
    interrupts.stop(f"interrupted after {len(terms['rec'])} of {n} test images: they are kept "
                    f"in {partial}; the same command again continues from there")
  return terms, compile_seconds, seconds, done


def _check_finite(terms: dict) -> None:
  for name in ("log_px", "rec"):
    if name in terms:
      bad = np.flatnonzero(~np.isfinite(terms[name]))
      if bad.size:
        raise UserError(f"non-finite {name} for test image {int(bad[0])} "
                        f"({bad.size} images in all)")


def is_run(workdir: str) -> bool:
  """Whether `workdir` holds one run (its config), rather than a --seeds folder of runs."""
  return os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE))


def _same_report(workdir: str, identity: dict, run_dtype: str) -> tuple[str, dict] | None:
  """An existing report of exactly this identity in `workdir`, as (path, report), or None."""
  for name in (REPORT_FILE, _stem(identity) + ".json"):
    path = os.path.join(workdir, name)
    try:
      with open(path) as f:
        report = json.load(f)
      if _same_identity(report["settings"], identity, run_dtype):
        report["settings"].setdefault("dtype", run_dtype)
        return path, report
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
      continue
  return None


def evaluate_run(workdir: str, settings: Settings, force: bool = False,
                 reuse: bool = False) -> tuple[str, dict]:
  """Evaluates the run in `workdir` and writes its report; returns (report path, report).

  With `reuse` (and not `force`), an existing report of the same identity is returned as it is:
  its numbers depend on nothing else.
  """
  settings.validate()
  config, epoch, model = run.restore_model(workdir, settings.dtype)
  dtype = settings.dtype or config.dtype
  spec = settings.data or config.data
  dataset = data_lib.load(spec)
  method = config.binarize
  test_x = data_lib.binarized_test(dataset.test_images, method)
  n = len(test_x) if settings.test_size is None else settings.test_size
  if n > len(test_x):
    raise UserError(f"--test-size {n} is larger than the {len(test_x)} test images of "
                    f"{dataset.name}")
  test_x = test_x[:n]
  backend = jax.default_backend()
  batch = min(settings.batch or default_batch(backend, dtype), n)
  identity = {"iw_samples": settings.iw_samples, "test_size": n, "seed": settings.seed,
              "data": spec, "binarize": method, "checkpoint_epoch": epoch, "dtype": dtype}
  if reuse and not force:
    same = _same_report(workdir, identity, config.dtype)
    if same is not None:
      return same
  path = report_path(workdir, identity, force, config.dtype)
  stochastic = likelihood.is_stochastic(model, test_x[:1].astype(np.float32))
  partial = partial_path(workdir, identity)
  meta = {**identity, "stochastic": stochastic, "chunk": settings.chunk, "batch": batch}
  terms, compile_seconds, seconds, resumed = _per_image_terms(model, test_x, settings, batch,
                                                              stochastic, partial, meta)
  _check_finite(terms)
  pixels = math.prod(test_x.shape[1:])
  results = likelihood.summarize(terms, pixels, settings.iw_samples)
  computed = n - resumed  # the images of this process (the others: an interrupted one's)
  timing = {"compile_seconds": compile_seconds, "seconds": seconds,
            "images_per_sec": computed / seconds}
  if resumed:
    timing["resumed_images"] = resumed
  if stochastic:
    timing["latent_samples_per_sec"] = computed * settings.iw_samples / seconds
  device = jax.devices()[0]
  report = {
      "settings": {**identity, "model": config.model,
                   "stochastic": stochastic, "chunk": min(settings.chunk, settings.iw_samples),
                   "batch": batch, "pixels": pixels},
      "results": results,
      "timing": timing,
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "backend": backend,
                   "device": getattr(device, "device_kind", str(device))},
  }
  _write(path, report, force)
  if os.path.exists(partial):
    os.remove(partial)
  return path, report


def summary_line(report: dict) -> str:
  """One line of the report's headline numbers."""
  r, s, t = report["results"], report["settings"], report["timing"]
  where = f"{s['test_size']} test images, {t['seconds']:.1f} s"
  if "nll" not in r:
    return (f"{r['note']}: reconstruction {r['rec']:.2f} nats/image, pixel error "
            f"{100 * r['pixel_error_rate']:.2f}% ({where})")
  return (f"NLL {r['nll']:.2f} ± {r['nll_se']:.2f} nats ({r['nll_bits_per_dim']:.4f} bits/dim, "
          f"k={s['iw_samples']})  -ELBO {r['neg_elbo']:.2f}  KL {r['kl']:.2f}  rec {r['rec']:.2f}  "
          f"active units {r['active_units']}/{r['latent_dim']}  pixel error "
          f"{100 * r['pixel_error_rate']:.2f}%  ({where})")


SEEDS_REPORT = "evaluation_seeds_k{iw_samples}_n{test_size}_s{seed}{suffix}.json"


def evaluate_seeds(workdir: str, settings: Settings, force: bool = False,
                   progress=print) -> tuple[str, dict]:
  """Evaluates every seed_K run in `workdir` (of `--seeds`) and writes their mean and spread.

  Each seed's own report goes to its folder as for one run (one already there with the same
  settings is reused); the summary, `evaluation_seeds_k{K}_n{N}_s{S}.json` in `workdir`, holds
  every seed's numbers and, for each, the mean, the sample standard deviation, min and max. It is
  derived from the seeds' reports alone and rewritten with them.
  """
  from vae_jax.training import seeds as seeds_lib  # pylint: disable=import-outside-toplevel
  settings.validate()
  runs = seeds_lib.seed_workdirs(workdir)
  if not runs:
    raise UserError(f"{workdir} holds no run ({workdir_lib.CONFIG_FILE} not found) and no "
                    "seed_K runs of --seeds")
  seeds_lib.check_same_run(runs)
  per_seed = {}
  for seed, path in runs:
    report_file, report = evaluate_run(path, settings, force=force, reuse=True)
    progress(f"seed {seed}: {summary_line(report)}  -> {report_file}")
    per_seed[seed] = report
  first = next(iter(per_seed.values()))["settings"]
  summary = {"seeds": sorted(per_seed),
             "settings": {k: v for k, v in first.items() if k != "checkpoint_epoch"},
             "checkpoint_epochs": {str(s): r["settings"]["checkpoint_epoch"]
                                   for s, r in per_seed.items()},
             "results": _spread([r["results"] for r in per_seed.values()]),
             "per_seed": {str(s): r["results"] for s, r in per_seed.items()}}
  path = os.path.join(workdir, SEEDS_REPORT.format(iw_samples=settings.iw_samples,
                                                   test_size=first["test_size"],
                                                   seed=settings.seed,
                                                   suffix=_dtype_suffix(first["dtype"])))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(summary, indent=2) + "\n")
  os.replace(tmp, path)
  return path, summary


def _spread(results: list[dict]) -> dict:
  """{name: {mean, sd, min, max}} of every number all the seeds' results have."""
  out = {}
  for name, value in results[0].items():
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not all(isinstance(r.get(name), (int, float)) for r in results):
      continue
    values = np.array([r[name] for r in results], np.float64)
    out[name] = {"mean": float(values.mean()),
                 "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                 "min": float(values.min()), "max": float(values.max())}
  return out


def seeds_summary_line(summary: dict) -> str:
  """One line: the seeds' mean +- standard deviation of the headline numbers."""
  r = summary["results"]
  parts = [f"{len(summary['seeds'])} seeds ({','.join(map(str, summary['seeds']))})"]
  for name, label in (("nll", "NLL"), ("neg_elbo", "-ELBO"), ("active_units", "active units")):
    if name in r:
      parts.append(f"{label} {r[name]['mean']:.2f} ± {r[name]['sd']:.2f}")
  return ", ".join(parts) + " (mean ± sd over seeds)"
