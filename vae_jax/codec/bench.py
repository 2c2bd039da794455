"""The codec benchmark: bits-back against classic codecs and the model's bound, and rate-distortion.

For every dataset: the bytes of each codec in `baselines` and of the bits-back file (every byte of
it), encode and decode speed (compilation apart), an exact round trip, and the model's -ELBO as the
bound (its training metrics' test ELBO, and one computed here with the analytic KL and one latent
sample per image). For the first dataset also a rate-distortion curve of the lossy mode over
several steps beside PCA (fitted on that dataset's training split, coefficients quantized and
coded the same way), as report.json, report.md and rd.png.
"""

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax.nn import losses, models
from vae_jax.codec import baselines, container, context, images as images_lib, lossy
from vae_jax.codec.files import Codec
from vae_jax.codec.tables import cpu_device
from vae_jax.errors import UserError
from vae_jax.machine import cpu_name

PIXELS = 784
LN2 = math.log(2.0)
DEFAULT_STEPS = (0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6)  # in posterior standard deviations
DEFAULT_PCA_STEPS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
DEFAULT_KS = (1, 4, 16, 64)
CONTEXT_ALONE, VAE_ALONE = frozenset({context.CONTEXT}), frozenset({context.VAE})


def _bpp(n_bytes: float, n_images: int) -> float:
  return 8 * n_bytes / (n_images * PIXELS)


def computed_negative_elbo(model: nnx.Module, images01: np.ndarray, pixel_bits: int,
                           batch: int = 500) -> tuple[float, float]:
  """Mean -ELBO in nats (analytic KL plus -log p(x|z) at one z ~ q(z|x) per image, fixed key), and
  the same with P(pixel = 1) clamped to [2^-pixel_bits, 1 - 2^-pixel_bits] as the coder does."""
  graphdef, state = nnx.split(model)
  limit = math.log((1 << pixel_bits) - 1)  # sigmoid(limit) = 1 - 2^-pixel_bits

  @jax.jit
  def terms(state, x, key):
    m = nnx.merge(graphdef, state)
    mean, logvar = m.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
    x_logits = models.likelihood_logits(m, z, x)
    kl = losses.kl_analytic(mean, logvar)
    rec = -losses.bernoulli_log_likelihood(x_logits, x)
    rec_clamped = -losses.bernoulli_log_likelihood(jnp.clip(x_logits, -limit, limit), x)
    return jnp.sum(rec + kl), jnp.sum(rec_clamped + kl)

  totals, key = np.zeros(2), jax.random.key(0)
  with jax.default_device(cpu_device()):
    state = jax.device_put(state, cpu_device())
    for i, start in enumerate(range(0, len(images01), batch)):
      x = images01[start:start + batch].astype(np.float32)
      totals += np.asarray(terms(state, x, jax.random.fold_in(key, i)), np.float64)
  plain, clamped = totals / len(images01)
  return float(plain), float(clamped)


def lossless(codec: Codec, images01: np.ndarray, **kwargs) -> dict:
  raw, enc = codec.encode_lossless(images01, show_progress=True, **kwargs)
  decoded, dec = codec.decode(raw, "benchmark file", show_progress=True)
  return {"bytes": len(raw), "bits_per_pixel": _bpp(len(raw), len(images01)),
          "bits_per_image": 8 * len(raw) / len(images01),
          "exact": bool(np.array_equal(decoded, images01)),
          "initial_bits": enc.extra["initial_bits"], "header_bytes": enc.extra["header_bytes"],
          "initial_bits_per_pixel": _bpp(enc.extra["initial_bits"] / 8, len(images01)),
          "encode_images_per_sec": enc.images_per_sec, "decode_images_per_sec": dec.images_per_sec,
          "encode_seconds": enc.seconds, "decode_seconds": dec.seconds,
          "compile_seconds": enc.compile_seconds + dec.compile_seconds,
          "images_per_method": enc.extra["images_per_method"]}


def adversarial_sets(test01: np.ndarray, n: int = 100) -> dict[str, np.ndarray]:
  """Images unlike the training data, n of each kind (at most the test images), (n, 28, 28, 1)."""
  n = min(n, len(test01))
  shape = (n,) + test01.shape[1:]
  checker = (np.indices(test01.shape[1:3]).sum(0) % 2).astype(np.uint8)[..., None]
  shifted = np.zeros(shape, np.uint8)
  shifted[:, :, 1:] = test01[:n, :, :-1]
  return {"all black (0)": np.zeros(shape, np.uint8), "all white (1)": np.ones(shape, np.uint8),
          "uniform noise": np.random.default_rng(0).integers(0, 2, shape, dtype=np.uint8),
          "inverted test digits": 1 - test01[:n],
          "checkerboards": np.broadcast_to(checker, shape).copy(),
          "test digits shifted 1 pixel right": shifted,
          "test digits rotated 90°": np.rot90(test01[:n], axes=(1, 2)).copy()}


def _coded(codec: Codec, x: np.ndarray, **kwargs) -> dict:
  """One file of x: its bytes, bits/pixel, whether it decodes exactly, its images per method."""
  raw, enc = codec.encode_lossless(x, **kwargs)
  decoded, dec = codec.decode(raw, "benchmark file")
  return {"bytes": len(raw), "bits_per_pixel": _bpp(len(raw), len(x)),
          "exact": bool(np.array_equal(decoded, x)),
          "images_per_method": enc.extra["images_per_method"],
          "max_image_bits": enc.extra["max_image_bits"], "initial_bits": enc.extra["initial_bits"],
          "net_bits_per_image": float(enc.extra["image_bits"].mean()),
          "encode_images_per_sec": enc.images_per_sec, "decode_images_per_sec": dec.images_per_sec}


def adversarial(codec: Codec, test01: np.ndarray) -> dict[str, dict]:
  rows = {}
  for name, x in adversarial_sets(test01).items():
    jbig = baselines.jbig_bytes(x)
    rows[name] = {"images": len(x), **_coded(codec, x),
                  "context_alone": _coded(codec, x, methods=CONTEXT_ALONE),
                  "jbig_bits_per_pixel": None if jbig is None else _bpp(jbig, len(x))}
  return rows


def rate_against_k(codec: Codec, images01: np.ndarray, ks, iwae=None) -> list[dict]:
  """BB-IS (the VAE alone) at each k: net bits per image, the whole file, the initial bits apart,
  speeds; beside the float model's IWAE-k bound (`iwae(images, k)`: mean -log p in nats)."""
  rows = []
  for k in ks:
    print(f"BB-IS k={k}", file=sys.stderr)
    row = {"k": k, **_coded(codec, images01, methods=VAE_ALONE, samples=k)}
    row["net_bits_per_pixel"] = row["net_bits_per_image"] / PIXELS
    if iwae is not None:
      row["iwae_bits_per_pixel"] = iwae(images01, k) / (PIXELS * LN2)
    rows.append(row)
  return rows


def _bce(logits: np.ndarray, images01: np.ndarray) -> float:
  """Mean over images of -log p(x|z) in nats, from logits."""
  logits = logits.astype(np.float64)
  x = images01.reshape(len(images01), -1).astype(np.float64)
  return float(np.mean(np.sum(np.logaddexp(0.0, logits) - x * logits, axis=1)))


def lossy_curve(codec: Codec, images01: np.ndarray, steps) -> list[dict]:
  rows = []
  flat = images01.reshape(len(images01), -1)
  for step in steps:
    raw, report, decoded, logits = codec.encode_lossy(images01, step)
    again, dec = codec.decode(raw, "benchmark file")
    rows.append({"step": step, "bytes": len(raw), "bits_per_image": 8 * len(raw) / len(images01),
                 "pixel_error_rate": float(np.mean(decoded != flat)),
                 "bce_nats_per_image": _bce(logits, images01),
                 "coded_dims": report.extra["coded_dims"],
                 "decode_matches": bool(np.array_equal(again.reshape(len(again), -1), decoded)),
                 "encode_images_per_sec": report.images_per_sec,
                 "decode_images_per_sec": dec.images_per_sec})
  return rows


def pca_curve(train01: np.ndarray, images01: np.ndarray, components: int, steps) -> list[dict]:
  """PCA fitted on train01; coefficients rounded to multiples of step and coded by `lossy`."""
  try:
    from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("the PCA baseline needs scikit-learn: pip install scikit-learn") from None
  pca = PCA(n_components=components, random_state=0).fit(train01.reshape(len(train01), -1))
  flat = images01.reshape(len(images01), -1)
  coefficients = pca.transform(flat.astype(np.float64))
  # the same container around the symbols as the lossy mode's files
  header = len(container.Container(container.LOSSY, bytes(32), 0, (28, 28, 1), 0, b"", b"")
               .to_bytes()) + len(lossy.pack_settings(1.0, 1, np.ones(components, np.float16),
                                                      lossy.FactorizedPrior.fit(
                                                          np.zeros((1, components), np.int64))))
  rows = []
  for step in steps:
    q = np.rint(coefficients / step).astype(np.int64)
    prior = lossy.FactorizedPrior.fit(q)
    words = lossy.encode_symbols(q, prior)
    assert np.array_equal(lossy.decode_symbols(words, prior, len(q)), q)
    n_bytes = header + 4 * len(words)
    decoded = (pca.inverse_transform(q * step) > 0.5).astype(np.uint8)
    rows.append({"step": step, "bytes": n_bytes, "bits_per_image": 8 * n_bytes / len(images01),
                 "pixel_error_rate": float(np.mean(decoded != flat)),
                 "coded_dims": len(prior.coded_dims())})
  return rows


def plot(curve, pca, lossless_bits_per_image: float, elbo_bits_per_image: float, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  ax1.plot([r["bits_per_image"] for r in curve], [r["pixel_error_rate"] for r in curve], "o-",
           label="VAE, quantized posterior mean")
  ax1.plot([r["bits_per_image"] for r in pca], [r["pixel_error_rate"] for r in pca], "s--",
           label=f"PCA ({pca[0]['components']} components), quantized")
  ax1.axvline(lossless_bits_per_image, color="k", lw=1, ls=":",
              label=f"bits-back lossless ({lossless_bits_per_image:.1f} bits, error 0)")
  ax1.set_xscale("log")
  ax1.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax1.set_xlabel("bits per image (whole file)")
  ax1.set_ylabel("pixel error rate")
  ax1.legend(fontsize=8)
  ax1.grid(alpha=0.3, which="both")
  ax2.plot([r["bits_per_image"] for r in curve], [r["bce_nats_per_image"] / LN2 for r in curve],
           "o-", label="VAE: -log2 p(x | decoded latent)")
  ax2.axvline(lossless_bits_per_image, color="k", lw=1, ls=":", label="bits-back lossless")
  ax2.axhline(elbo_bits_per_image, color="grey", lw=1, ls="--", label="model -ELBO")
  ax2.set_xscale("log")
  ax2.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax2.set_xlabel("bits per image (whole file)")
  ax2.set_ylabel("BCE, bits per image")
  ax2.legend(fontsize=8)
  ax2.grid(alpha=0.3, which="both")
  fig.suptitle("Rate-distortion on the thresholded test set")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _versions() -> dict:
  import constriction, flax, PIL, scipy, sklearn  # pylint: disable=import-outside-toplevel,multiple-imports
  versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
              "numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
              "pillow": PIL.__version__}
  versions["constriction"] = getattr(constriction, "__version__", None) or _pip_version("constriction")
  try:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "jbigkit-bin"], capture_output=True,
                         text=True, check=False)
    versions["jbigkit-bin"] = out.stdout or None
  except OSError:
    versions["jbigkit-bin"] = None
  return versions


def _pip_version(name: str):
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def _machine() -> dict:
  return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}


def _commit() -> str | None:
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
    return head + ("+uncommitted changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return None


def _same_data(spec: str, other: str) -> bool:
  """Whether two --data spellings name the same source (idx: directories compared by real path)."""
  if spec.startswith("idx:") and other.startswith("idx:"):
    return os.path.realpath(spec[4:]) == os.path.realpath(other[4:])
  return spec == other


def plot_rate_against_k(entry: dict, path: str) -> None:
  """rate_k.png: BB-IS net and whole-file bits/pixel against k, beside the IWAE-k bound and the
  dataset's context coder and JBIG rates (whole test file), from one dataset entry of the report."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = entry["rate_against_k"]
  ks = [r["k"] for r in rows]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ax.plot(ks, [r["net_bits_per_pixel"] for r in rows], "o-", label="BB-IS net (chain growth)")
  ax.plot(ks, [r["bits_per_pixel"] for r in rows], "s--", label="BB-IS whole file (initial bits in)")
  if all("iwae_bits_per_pixel" in r for r in rows):
    ax.plot(ks, [r["iwae_bits_per_pixel"] for r in rows], "^:", label="IWAE-k bound (float model)")
  jbig = next((v for n, v in (entry.get("baselines") or {}).items() if n.startswith("JBIG")), None)
  for name, value, style in (("context coder alone", entry.get("context_alone"), "-."),
                             ("JBIG", jbig, ":")):
    if value:
      ax.axhline(value["bits_per_pixel"], color="grey", lw=1, ls=style,
                 label=f"{name} ({value['bits_per_pixel']:.4f}, whole test file)")
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.set_xlabel("k (posterior samples per image)")
  ax.set_ylabel("bits per pixel")
  ax.set_title(f"Rate against k, first {entry['rate_against_k_images']:,} test images")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(model_spec: str, config, model, metrics: list[dict], data_specs: list[str], out_dir: str,
        count: int | None, steps, pca_steps, command: str, ks=DEFAULT_KS,
        k_count: int = 1000, iwae=None) -> dict:
  """Measures everything, writes report.json, report.md, rd.png and rate_k.png into out_dir; returns the report."""
  codec = Codec(model, config)
  report = {"command": command, "model": model_spec, "date": datetime.date.today().isoformat(),
            "machine": _machine(), "versions": _versions(), "commit": _commit(),
            "load_average_start": os.getloadavg(), "coder": {
                "latent_bits": codec.settings.precision.latent_bits,
                "posterior_bits": codec.settings.precision.posterior_bits,
                "pixel_bits": codec.settings.precision.pixel_bits,
                "max_batch": codec.settings.max_batch, "ramp": codec.settings.ramp,
                "seed_words": codec.settings.seed_words},
            "datasets": []}
  metrics_elbo = -metrics[-1]["test_elbo"] if metrics and "test_elbo" in metrics[-1] else None
  for i, spec in enumerate(data_specs):
    test = images_lib.load(spec, "test", count)
    entry = {"data": spec, "images": len(test), "trained_on": _same_data(spec, config.data)}
    print(f"{spec}: {len(test)} test images: classic codecs", file=sys.stderr)
    entry["baselines"] = {name: (None if b is None else {"bytes": b, "bits_per_pixel": _bpp(b, len(test))})
                          for name, b in baselines.measure(test).items()}
    print(f"{spec}: bits-back", file=sys.stderr)
    entry["bits_back"] = lossless(codec, test)
    print(f"{spec}: the context coder alone, the VAE alone", file=sys.stderr)
    entry["context_alone"] = lossless(codec, test, methods=CONTEXT_ALONE)
    entry["vae_alone"] = lossless(codec, test, methods=VAE_ALONE)
    computed, clamped = computed_negative_elbo(model, test, codec.settings.precision.pixel_bits)
    entry["bound"] = {"computed_nats": computed, "computed_bits_per_pixel": computed / (PIXELS * LN2),
                      "clamped_nats": clamped, "clamped_bits_per_pixel": clamped / (PIXELS * LN2)}
    if entry["trained_on"] and metrics_elbo is not None and count is None:
      entry["bound"]["metrics_nats"] = metrics_elbo
      entry["bound"]["metrics_bits_per_pixel"] = metrics_elbo / (PIXELS * LN2)
    if i == 0:
      print(f"{spec}: adversarial images", file=sys.stderr)
      entry["adversarial"] = adversarial(codec, test)
      entry["rate_against_k"] = rate_against_k(codec, test[:k_count], ks, iwae)
      entry["rate_against_k_images"] = min(k_count, len(test))
      plot_rate_against_k(entry, os.path.join(out_dir, "rate_k.png"))
      if getattr(model, "autoregressive", False):
        entry["lossy_skipped"] = ("no rate-distortion curve: a context model has no lossy mode "
                                  "(its pixels depend on the pixels decoded before them)")
      else:
        print(f"{spec}: rate-distortion", file=sys.stderr)
        entry["lossy"] = lossy_curve(codec, test, steps)
        train = images_lib.load(spec, "train")
        entry["pca"] = [{**r, "components": model.latent_dim}
                        for r in pca_curve(train, test, model.latent_dim, pca_steps)]
        plot(entry["lossy"], entry["pca"], entry["bits_back"]["bits_per_image"],
             entry["bound"].get("metrics_nats", computed) / LN2, os.path.join(out_dir, "rd.png"))
    report["datasets"].append(entry)
  report["load_average_end"] = os.getloadavg()
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  return report


def markdown(report: dict) -> str:
  lines = [f"# Compression benchmark: bits-back coding with `{report['model']}`", "",
           "Lossless: BB-ANS on one constriction ANS stack, latents in 2^8 equal-prior-mass "
           "buckets, q(z|x) and p(x|z) as integer tables (`vae_jax/codec/`). Every byte of the "
           "file is counted; the initial bits are the words of a fixed pseudo-random seed stack "
           "the chain consumed (the untouched rest is regenerated by the decoder, not stored). "
           "Encode and decode speeds exclude compilation (reported apart) and were measured on a "
           "shared machine (load averages below). The lossy mode codes the posterior mean quantized "
           "with steps in units of each dimension's average posterior standard deviation; PCA "
           "(fitted on the training split, as many components as the latent has dimensions) "
           "quantizes its coefficients with one step and codes them with the same coder and prior "
           "family; both decode to an image thresholded at 0.5 (the VAE: the decoder's most "
           "probable image).", "",
           f"Command: `{report['command']}`", "",
           f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores "
           f"({report['machine']['platform']}); load average at start "
           f"{', '.join(f'{x:.1f}' for x in report['load_average_start'])}, at end "
           f"{', '.join(f'{x:.1f}' for x in report['load_average_end'])}. Commit {report['commit']}.",
           "", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
           "Coder: " + ", ".join(f"{k} {v}" for k, v in report["coder"].items()), ""]
  for entry in report["datasets"]:
    bb, bound = entry["bits_back"], entry["bound"]
    lines += [f"## {entry['data']}: {entry['images']} test images, thresholded at 0.5", ""]
    if not entry["trained_on"]:
      lines += ["The model was not trained on this data: its numbers here test generalization. "
                "A pixel the model is confidently wrong about costs the coder at most 16 bits (its "
                "clamp), but any number of bits in the plain −ELBO: hence the clamped bound.", ""]
    jbig = next((v for k, v in entry["baselines"].items() if k.startswith("JBIG")), None)
    vs = (lambda b: f" {b / jbig['bytes']:.3f} |") if jbig else (lambda b: " — |")
    lines += ["| codec | bytes | bits/pixel | size vs JBIG |", "|---|---:|---:|---:|"]
    for name, value in entry["baselines"].items():
      lines.append(f"| {name} | " + ("not installed | — | — |" if value is None else
                                     f"{value['bytes']:,} | {value['bits_per_pixel']:.4f} |"
                                     + vs(value["bytes"])))
    ctx, vae = entry["context_alone"], entry["vae_alone"]
    lines.append(f"| context coder alone (KT counts on JBIG's template) | {ctx['bytes']:,} | "
                 f"{ctx['bits_per_pixel']:.4f} |" + vs(ctx["bytes"]))
    lines.append(f"| VAE bits-back alone | {vae['bytes']:,} | {vae['bits_per_pixel']:.4f} |"
                 + vs(vae["bytes"]))
    lines.append(f"| **per image the shortest of VAE, context coder, raw (whole file)** | "
                 f"{bb['bytes']:,} | **{bb['bits_per_pixel']:.4f}** |" + vs(bb["bytes"]))
    if "metrics_nats" in bound:
      lines.append(f"| model −ELBO from its training metrics (bound) | — | "
                   f"{bound['metrics_bits_per_pixel']:.4f} | — |")
    lines.append(f"| model −ELBO computed here (analytic KL, 1 sample) | — | "
                 f"{bound['computed_bits_per_pixel']:.4f} | — |")
    lines.append(f"| the same, P(pixel) clamped to [2^-16, 1 − 2^-16] as the coder does | — | "
                 f"{bound['clamped_bits_per_pixel']:.4f} | — |")
    ref = bound.get("metrics_bits_per_pixel", bound["computed_bits_per_pixel"])
    lines += ["", f"Bits-back: exact round trip {bb['exact']}; {bb['bits_per_pixel'] / ref - 1:+.2%} "
              f"against the −ELBO, {bb['bits_per_pixel'] / bound['clamped_bits_per_pixel'] - 1:+.2%} "
              f"against the clamped −ELBO; initial bits {bb['initial_bits']:,} "
              f"({bb['initial_bits_per_pixel']:.6f} bits/pixel), header {bb['header_bytes']} bytes; "
              f"encode {bb['encode_images_per_sec']:,.0f} images/s, decode "
              f"{bb['decode_images_per_sec']:,.0f} images/s (compilation {bb['compile_seconds']:.1f} s "
              "apart).", ""]
    lines += ["Images per method: " + ", ".join(f"{k} {v:,}" for k, v in
                                                bb["images_per_method"].items()) + ".", ""]
    if "adversarial" in entry:
      lines += ["### Adversarial images (each kind coded as its own file)", "",
                "| images | count | bits/pixel | context coder alone | JBIG | images per method "
                "(VAE/context/raw) | largest image, bits | exact round trip |",
                "|---|---:|---:|---:|---:|---|---:|---|"]
      for name, r in entry["adversarial"].items():
        jbig_bpp = "—" if r["jbig_bits_per_pixel"] is None else f"{r['jbig_bits_per_pixel']:.4f}"
        lines.append(f"| {name} | {r['images']} | {r['bits_per_pixel']:.4f} | "
                     f"{r['context_alone']['bits_per_pixel']:.4f} | {jbig_bpp} | "
                     + "/".join(str(v) for v in r["images_per_method"].values())
                     + f" | {r['max_image_bits']:.1f} | {r['exact'] and r['context_alone']['exact']} |")
      lines += ["", "No image costs more than its 784 raw bits plus its method flag (<= 5 bits); "
                "the file adds its header.", ""]
    if "rate_against_k" in entry:
      lines += [f"### Importance-sampled bits-back (BB-IS), the VAE alone, first "
                f"{entry['rate_against_k_images']:,} images", "", "![rate against k](rate_k.png)", "",
                "| k | net bits/pixel | IWAE-k bound (float model) | whole file bits/pixel | "
                "initial bits | encode images/s | decode images/s | exact |",
                "|---:|---:|---:|---:|---:|---:|---:|---|"]
      for r in entry["rate_against_k"]:
        bound = f"{r['iwae_bits_per_pixel']:.4f}" if "iwae_bits_per_pixel" in r else "—"
        lines.append(f"| {r['k']} | {r['net_bits_per_pixel']:.4f} | {bound} | "
                     f"{r['bits_per_pixel']:.4f} | {r['initial_bits']:,} | "
                     f"{r['encode_images_per_sec']:,.0f} | {r['decode_images_per_sec']:,.0f} | "
                     f"{r['exact']} |")
      lines += ["", "Net: what the chain charges per image (the stack's growth, from the integer "
                "tables), without the initial bits, which grow with k (a batch pops k latents per "
                "image before it pushes k - 1 back) and are counted in the whole file.", ""]
    if "lossy_skipped" in entry:
      lines += ["### Lossy", "", entry["lossy_skipped"] + ".", ""]
    if "lossy" in entry:
      lines += ["### Lossy: rate–distortion", "", "![rate-distortion](rd.png)", "",
                "| codec | step | bits/image | pixel error rate | BCE nats/image | coded dims | decode = encoder's image |",
                "|---|---:|---:|---:|---:|---:|---|"]
      for r in entry["lossy"]:
        lines.append(f"| VAE mean | {r['step']:g} | {r['bits_per_image']:.2f} | "
                     f"{r['pixel_error_rate']:.4f} | {r['bce_nats_per_image']:.2f} | "
                     f"{r['coded_dims']} | {r['decode_matches']} |")
      for r in entry["pca"]:
        lines.append(f"| PCA, {r['components']} components | {r['step']:g} | "
                     f"{r['bits_per_image']:.2f} | {r['pixel_error_rate']:.4f} | — | "
                     f"{r['coded_dims']} | — |")
      lines += ["", f"Lossless bits-back for comparison: {bb['bits_per_image']:.2f} bits/image at "
                "error 0.", ""]
  return "\n".join(lines) + "\n"
