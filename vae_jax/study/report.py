"""The autoencoder study's report: verdicts on the article's four claims, report.md, report.json, plots.

`write_report(results, out)` needs only the numbers `vae_jax.study.runner.run_study` returns (and the
relative paths of the digit grids it drew), so the report can be rebuilt from report.json alone.
The verdicts follow fixed, stated rules (`RULES`), computed from the numbers, never written by hand.
"""

import json
import os
import statistics

from vae_jax.study import pictures as study_pictures
from vae_jax.study.runner import AE_VAE_PAIRS, CONV_MLP_PAIRS

SATURATION = 0.02        # a model "stops gaining" at the first size within 2% of its best BCE
LOSS_REASONABLE = 1.25   # a loss is "reasonable" if its pixel error is within 1.25x the best
LOSS_POOR = 2.0          # ... and clearly worse beyond 2x
CONV_MAJORITY = 0.75     # conv "captures more" if it wins >= 75% of size-matched comparisons
PRIOR_FAILS = 2.0        # an AE's N(0, I) samples "fail" if their FCD is >= 2x the VAE prior's
GMM_MATCHES = 1.1        # a GMM-sampled AE "generates" if its FCD is <= 1.1x the VAE prior's
RULES = (f"Verdict rules: (1) every model's test BCE must fall from the smallest to the largest "
         f"bottleneck; a model stops gaining at the first size within {SATURATION:.0%} of its best "
         f"BCE. (2) a loss is reasonable if its pixel error is within {LOSS_REASONABLE}x the best "
         f"loss's, clearly worse beyond {LOSS_POOR}x. (3) convolutions capture more if the "
         f"convolutional model has the lower pixel error in at least {CONV_MAJORITY:.0%} of the "
         f"size-matched comparisons (at most {1 - CONV_MAJORITY:.0%}: the claim fails). (4) a plain "
         f"AE's decoded N(0, I) samples fail if their FCD is at least {PRIOR_FAILS}x the VAE prior "
         f"samples'; its GMM samples generate if their FCD is at most {GMM_MATCHES}x the VAE "
         f"prior samples'.")

CLAIMS = {
    "bottleneck": "The bottleneck's size trades compression against reconstruction quality.",
    "losses": "l1, l2 and cross-entropy are all reasonable reconstruction losses.",
    "conv": "Convolutional encoders/decoders capture more spatial information than MLPs.",
    "creativity": "A plain autoencoder has zero creativity (its latent space is discontinuous); "
                  "the VAE's sampled, KL-regularized latent space generates.",
}


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
  if value is None:
    return "—"
  if isinstance(value, int):
    return f"{value:,}{suffix}"
  return f"{value:,.{digits}f}{suffix}"


def _plural(n: int, word: str) -> str:
  return f"{n:,} {word}" + ("" if n == 1 else "s")


def _by(rows, **match):
  return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _one(rows, **match):
  found = _by(rows, **match)
  return found[0] if found else None


# ---------------------------------------------------------------- verdicts

def bottleneck_verdict(rows: list[dict]) -> dict:
  parts, notes = [], []
  falls_everywhere, saturating = True, []
  for model in dict.fromkeys(r["model"] for r in rows):
    mine = sorted(_by(rows, model=model), key=lambda r: r["latent"])
    if len(mine) < 2:
      continue
    first, last = mine[0], mine[-1]
    best = min(r["bce"] for r in mine)
    stop = next(r["latent"] for r in mine if r["bce"] <= best * (1 + SATURATION))
    falls = last["bce"] < first["bce"]
    falls_everywhere &= falls
    text = (f"{model}: BCE {first['bce']:.1f} → {last['bce']:.1f} nats, pixel error "
            f"{first['pixel_error']:.2f}% → {last['pixel_error']:.2f}% (latent {first['latent']} → "
            f"{last['latent']})")
    if stop < last["latent"]:
      saturating.append(model)
      text += f"; within {SATURATION:.0%} of its best from latent {stop} on"
    if last.get("active_units") is not None:
      text += f"; {last['active_units']} of {last['latent']} units active at latent {last['latent']}"
    rises = [(a["latent"], b["latent"]) for a, b in zip(mine, mine[1:])
             if b["bce"] > a["bce"] * (1 + SATURATION)]
    if rises:
      text += "; BCE rose from latent " + ", ".join(f"{a} to {b}" for a, b in rises)
    parts.append(text)
    if stop < last["latent"]:
      unused = (f" and leaves {last['latent'] - last['active_units']} of its {last['latent']} "
                "latent units unused" if last.get("active_units") is not None
                and last["active_units"] < last["latent"] else "")
      notes.append(f"{model} stops gaining reconstruction quality at latent {stop}{unused}: "
                   f"beyond that a bigger bottleneck costs compression and buys nothing.")
    if not falls:
      notes.append(f"{model}'s reconstruction is no better at latent {last['latent']} than at "
                   f"{first['latent']}.")
  if not parts:
    return {"verdict": "not measured", "measured": "fewer than two latent sizes", "disagreements": []}
  verdict = "disagrees" if not falls_everywhere else "partly agrees" if saturating else "agrees"
  return {"verdict": verdict, "measured": "; ".join(parts) + ".", "disagreements": notes}


def losses_verdict(rows: list[dict]) -> dict:
  if len(rows) < 2:
    return {"verdict": "not measured", "measured": "fewer than two losses", "disagreements": []}
  best = min(rows, key=lambda r: r["pixel_error"])
  parts = [f"{r['objective']}: pixel error {r['pixel_error']:.2f}%, BCE {r['bce']:.1f} nats"
           for r in rows]
  ratios = {r["objective"]: r["pixel_error"] / max(best["pixel_error"], 1e-12) for r in rows}
  poor = [o for o, x in ratios.items() if x > LOSS_POOR]
  worse = [o for o, x in ratios.items() if LOSS_REASONABLE < x <= LOSS_POOR]
  notes = [f"{o} gives {ratios[o]:.2f}x the pixel error of {best['objective']}." for o in poor + worse]
  verdict = "disagrees" if poor else "partly agrees" if worse else "agrees"
  model, latent_dim = rows[0]["model"], rows[0]["latent"]
  measured = (f"{model} at latent {latent_dim}: " + "; ".join(parts) +
              f". Best pixel error: {best['objective']}. (BCE favours the model trained on it.)")
  return {"verdict": verdict, "measured": measured, "disagreements": notes}


def _speeds(runs: dict) -> dict:
  """{model: median training images/s over its runs}."""
  out = {}
  for model in dict.fromkeys(r["model"] for r in runs.values()):
    speeds = [r["images_per_sec"] for r in runs.values()
              if r["model"] == model and r.get("images_per_sec")]
    if speeds:
      out[model] = statistics.median(speeds)
  return out


def conv_verdict(rows: list[dict], runs: dict) -> dict:
  parts, notes = [], []
  wins = total = 0
  for conv, mlp in CONV_MLP_PAIRS:
    sizes = sorted({r["latent"] for r in _by(rows, model=conv)} &
                   {r["latent"] for r in _by(rows, model=mlp)})
    if not sizes:
      continue
    pair_wins = [l for l in sizes
                 if _one(rows, model=conv, latent=l)["pixel_error"]
                 < _one(rows, model=mlp, latent=l)["pixel_error"]]
    wins += len(pair_wins)
    total += len(sizes)
    detail = ", ".join(f"{l}: {_one(rows, model=conv, latent=l)['pixel_error']:.2f}% vs "
                       f"{_one(rows, model=mlp, latent=l)['pixel_error']:.2f}%" for l in sizes)
    speed = _speeds(runs)
    speed_text = (f"; {mlp} trains {speed[mlp] / speed[conv]:.1f}x as many images/s"
                  if conv in speed and mlp in speed else "")
    parts.append(f"{conv} has the lower pixel error than {mlp} at {len(pair_wins)} of {len(sizes)} "
                 f"latent sizes ({detail}){speed_text}")
    lost = [l for l in sizes if l not in pair_wins]
    if lost:
      notes.append(f"{conv}'s pixel error is not below {mlp}'s at latent "
                   f"{', '.join(map(str, lost))}.")
  if not total:
    return {"verdict": "not measured", "measured": "no convolutional/MLP pair was run",
            "disagreements": []}
  share = wins / total
  verdict = ("agrees" if share >= CONV_MAJORITY else
             "disagrees" if share <= 1 - CONV_MAJORITY else "partly agrees")
  return {"verdict": verdict, "measured": "; ".join(parts) + ".",
          "disagreements": notes if verdict != "agrees" else []}


def creativity_verdict(quality: dict) -> dict:
  rows = quality["rows"]
  floor = quality["floor"]["fcd"]
  parts, notes, verdicts = [], [], []
  for ae, vae in AE_VAE_PAIRS:
    get = lambda m, s: (_one(rows, model=m, sampler=s) or {}).get("fcd")
    ae_prior, ae_gmm, ae_mid = get(ae, "prior"), get(ae, "gmm"), get(ae, "midpoint")
    vae_prior, vae_mid = get(vae, "prior"), get(vae, "midpoint")
    if None in (ae_prior, ae_gmm, vae_prior):
      continue
    parts.append(f"FCD (floor {floor:.2f}): {ae} decoding N(0, I) {ae_prior:.2f}, {vae} prior "
                 f"samples {vae_prior:.2f}, {ae} GMM samples {ae_gmm:.2f}; interpolation midpoints "
                 f"{ae} {_fmt(ae_mid)} vs {vae} {_fmt(vae_mid)}")
    prior_fails = ae_prior >= PRIOR_FAILS * vae_prior
    gmm_generates = ae_gmm <= GMM_MATCHES * vae_prior
    if not prior_fails:
      notes.append(f"{ae}'s decoded N(0, I) samples are not far worse than {vae}'s prior samples "
                   f"(FCD {ae_prior:.2f} vs {vae_prior:.2f}).")
    if gmm_generates:
      notes.append(f"{ae} sampled from a 10-component Gaussian mixture fitted to its training codes "
                   f"generates digits {'better than' if ae_gmm < vae_prior else 'as good as'} "
                   f"{vae}'s prior samples (FCD {ae_gmm:.2f} vs {vae_prior:.2f}): its "
                   f"\"zero creativity\" is the sampler's, not the latent space's.")
    if ae_mid is not None and vae_mid is not None and ae_mid <= GMM_MATCHES * vae_mid:
      notes.append(f"{ae}'s decoded midpoints between two test digits are as realistic as "
                   f"{vae}'s (FCD {ae_mid:.2f} vs {vae_mid:.2f}): no sign of a discontinuous latent "
                   f"space between codes.")
    verdicts.append("disagrees" if not prior_fails else
                    "partly agrees" if gmm_generates else "agrees")
  if not verdicts:
    return {"verdict": "not measured", "measured": "no plain-AE/VAE pair was run",
            "disagreements": []}
  verdict = ("agrees" if all(v == "agrees" for v in verdicts) else
             "disagrees" if all(v == "disagrees" for v in verdicts) else "partly agrees")
  return {"verdict": verdict, "measured": "; ".join(parts) + ".", "disagreements": notes}


def verdicts(results: dict) -> dict:
  return {"bottleneck": bottleneck_verdict(results["bottleneck"]),
          "losses": losses_verdict(results["loss_choice"]),
          "conv": conv_verdict(results["bottleneck"], results["runs"]),
          "creativity": creativity_verdict(results["sample_quality"])}


# ---------------------------------------------------------------- report.md

def _table(header, rows, text_columns: int = 1) -> list[str]:
  """A markdown table; the first `text_columns` columns left-aligned, the numbers right-aligned."""
  align = ["---" if i < text_columns else "---:" for i in range(len(header))]
  return (["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
          + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _image(results, key, alt) -> list[str]:
  path = results["pictures"].get(key)
  return [f"![{alt}]({path})", ""] if path else []


def _markdown(results: dict, claims: dict) -> str:
  s = results["study"]
  clf = results["classifier"]
  q = results["sample_quality"]
  lines = ["# The article's autoencoder study, measured", ""]
  lines += [f"Data `{results['data']}`: {results['train_images']:,} training and "
            f"{results['test_images']:,} test digits, binarized at 0.5. Every run: "
            f"{_plural(s['epochs'], 'epoch')}, batch {s['batch_size']}, Adam {s['learning_rate']:g}, seed {s['seed']}. "
            f"Loss choice, denoising and creativity at latent size {s['focus_latent']}. "
            f"The runs' training and per-epoch evaluation took "
            f"{sum(r['seconds'] for r in results['runs'].values()) / 60:.1f} minutes, this "
            f"invocation of the study (reused runs cost only their measurement) "
            f"{results['seconds'] / 60:.1f} minutes, on {results['machine']['backend']} "
            f"({results['machine']['cpus']} CPUs).", ""]
  if clf.get("test_accuracy", 1.0) < 0.99:
    lines += [f"**Warning:** the classifier behind FCD and the MNIST score reached only "
              f"{clf['test_accuracy']:.2%} test accuracy (the study asks for ≥ 99%); its sample "
              f"numbers are indicative only.", ""]
  lines += ["## The four claims", ""]
  lines += _table(["claim", "measured", "verdict"],
                  [[CLAIMS[k], v["measured"], f"**{v['verdict']}**"] for k, v in claims.items()],
                  text_columns=3)
  lines += ["", RULES, "", "## Where the measurements disagree with the article", ""]
  notes = [n for v in claims.values() for n in v["disagreements"]]
  lines += [f"- {n}" for n in notes] or ["- Nowhere, by the rules above."]
  lines += ["", "## 1. Bottleneck size", ""]
  lines += _image(results, "bottleneck_plot", "reconstruction error against latent size")
  lines += _table(["model", "latent", "BCE (nats/image)", "pixel error (%)", "KL (nats)",
                   "active units"],
                  [[r["model"], r["latent"], _fmt(r["bce"]), _fmt(r["pixel_error"]),
                    _fmt(r.get("kl")), _fmt(r.get("active_units"))] for r in results["bottleneck"]])
  lines += ["", "BCE is −log p(x|z) of decode(encode(x)) with the posterior mean for VAEs; pixel "
            "error counts the pixels whose decoded probability is on the wrong side of 0.5; KL is "
            "the analytic KL(q(z|x) ‖ N(0, I)); a unit is active when the variance of its "
            "posterior mean over the test digits exceeds 0.01.", ""]
  lines += _image(results, "reconstructions", "reconstructions by latent size")
  lines += ["## 2. Loss choice", ""]
  lines += _image(results, "loss_choice_plot", "loss choice")
  lines += _table(["training loss", "pixel error (%)", "BCE (nats/image)"],
                  [[r["objective"], _fmt(r["pixel_error"]), _fmt(r["bce"])]
                   for r in results["loss_choice"]])
  lines += ["", "## 3. Convolutional vs multilayer-perceptron encoders and decoders", ""]
  conv_rows = []
  for conv, mlp in CONV_MLP_PAIRS:
    for l in s["latent_sizes"]:
      a, b = (_one(results["bottleneck"], model=m, latent=l) for m in (conv, mlp))
      if a and b:
        conv_rows.append([f"{conv} vs {mlp}", l, f"{a['pixel_error']:.2f} vs {b['pixel_error']:.2f}",
                          f"{a['bce']:.1f} vs {b['bce']:.1f}"])
  lines += _table(["pair", "latent", "pixel error (%)", "BCE (nats/image)"], conv_rows) + [""]
  lines += [f"Training speed (median images/s over a model's runs): " + ", ".join(
      f"{m} {_fmt(v, 0)}" for m, v in _speeds(results["runs"]).items()) + ".", ""]
  lines += ["## 4. Creativity: what the models generate", ""]
  lines += _image(results, "samples", "samples of each model")
  lines += _image(results, "interpolations", "interpolations")
  lines += _image(results, "sample_quality_plot", "FCD of each sampler")
  lines += _table(["model", "sampler", "images", "FCD", "FCD (logits)", "confidence",
                   "label entropy (nats)", "MNIST score"],
                  [["real training digits (floor)", "—", _fmt(q["floor"]["n"]), _fmt(q["floor"]["fcd"]),
                    _fmt(q["floor"]["fcd_logits"]), _fmt(q["floor"]["confidence"], 3),
                    _fmt(q["floor"]["label_entropy"], 3), _fmt(q["floor"]["score"])],
                   ["real test digits", "—", _fmt(q["reference"]["n"]), "0", "0",
                    _fmt(q["real_test"]["confidence"], 3),
                    _fmt(q["real_test"]["label_entropy"], 3), _fmt(q["real_test"]["score"])]]
                  + [[r["model"], r["sampler"], _fmt(r["n"]), _fmt(r["fcd"]), _fmt(r["fcd_logits"]),
                      _fmt(r["confidence"], 3), _fmt(r["label_entropy"], 3), _fmt(r["score"])]
                     for r in q["rows"]], text_columns=2)
  lines += ["", f"Every row is measured against the same {q['reference']['n']:,} "
            f"{q['reference']['images']}. FCD is the Fréchet distance between Gaussians fitted to "
            "the classifier's 128 penultimate-layer features (FCD (logits): its 10 logits, the "
            "layer TF-GAN's `mnist_frechet_distance` uses by default; neither is comparable to "
            "TF-GAN's numbers, which come from another classifier). Samples are fed as decoder "
            "probabilities. prior: decode(z ~ N(0, I)), what the seed's `sample()` does; gmm: a "
            f"{s['gmm_components']}-component Gaussian mixture fitted to the training codes "
            "(posterior means for VAEs); midpoint: decode of the mean of two random test digits' "
            "codes; reconstruction: decoded codes of training digits. Confidence is the mean "
            "max-probability, label entropy the entropy of the mean label distribution (ln 10 = "
            "2.303 at most), MNIST score exp(E KL(p(y|x) ‖ p(y))) (10 at most).", ""]
  lines += ["## Denoising", ""]
  lines += _image(results, "denoising_plot", "denoising")
  lines += _table(["model", "pixels flipped", "trained on", "output pixel error (%)",
                   "input pixel error (%)"],
                  [[r["model"], f"{r['noise']:.0%}",
                    f"{r['trained_noise']:.0%} flipped" if r["trained_noise"] else "clean digits",
                    _fmt(r["pixel_error"]), _fmt(r["input_error"])] for r in results["denoising"]],
                  text_columns=3)
  lines += ["", "Test inputs have each pixel flipped independently with that probability (one "
            "fixed draw per level); errors are against the clean digits.", ""]
  lines += _image(results, "denoising_examples", "denoising examples")
  lines += ["## The classifier", "",
            f"conv 3×3×32 – maxpool – conv 3×3×64 – maxpool – dense 128 – dense 10 "
            f"(`vae_jax/study/classifier.py`), trained on the {clf.get('train_images', 0):,} binarized "
            f"training digits with random shifts of up to {clf['config'].get('max_shift', 0)} pixels "
            f"for {_plural(clf['config']['epochs'], 'epoch')} ({clf.get('train_seconds', 0):.0f} s): test "
            f"accuracy **{clf['test_accuracy']:.2%}** on the binarized test digits, "
            f"{clf.get('grey_test_accuracy', float('nan')):.2%} on the grey-level ones.", ""]
  lines += ["## Runs", ""]
  lines += _table(["run", "outcome", "epochs", "seconds", "training images/s"],
                  [[name, r["outcome"], r["epochs"], _fmt(r["seconds"], 0),
                    _fmt(r["images_per_sec"], 0)] for name, r in results["runs"].items()],
                  text_columns=2)
  lines += ["", "## What a GPU run would add", "",
            "On one GPU the same command trains each run about 50× faster (README: the CVAE "
            "trains 269,782 images/s on one H100 against 5,463 on this 2-core CPU), so the study "
            "could give every run the tutorial's 100 epochs instead of a short budget, add latent "
            "sizes (64, 128, 256), train several seeds per run for error bars on every number "
            "above, and score more samples per sampler.", "",
            "## How this was measured", ""]
  m = results["machine"]
  if results.get("command"):
    lines += ["```bash", results["command"], "```", ""]
  lines += [f"Commit {results.get('commit') or 'unknown'}; " + ", ".join(
      f"{k} {m[k]}" for k in ("python", "jax", "jaxlib", "flax", "numpy") if m.get(k))
            + f"; {m['backend']} ({', '.join(m['devices'])}), {m['cpus']} CPUs"
            + (f", {m['platform']}" if m.get("platform") else "") + ".", "",
            "## Settings", "", "```json", json.dumps(s, indent=2), "```", ""]
  return "\n".join(lines)


def write_report(results: dict, out: str) -> dict:
  """Writes the plots, report.json and report.md under `out`; returns results with the verdicts."""
  pictures_dir = os.path.join(out, "pictures")
  results = {**results, "pictures": dict(results.get("pictures", {}))}
  plots = {"bottleneck_plot": ("bottleneck.png", study_pictures.bottleneck_plot,
                               results["bottleneck"]),
           "loss_choice_plot": ("loss_choice.png", study_pictures.loss_choice_plot,
                                results["loss_choice"]),
           "denoising_plot": ("denoising.png", study_pictures.denoising_plot,
                              results["denoising"])}
  for key, (filename, plot, rows) in plots.items():
    if rows:
      plot(os.path.join(pictures_dir, filename), rows)
      results["pictures"][key] = os.path.join("pictures", filename)
  if results["sample_quality"]["rows"]:
    study_pictures.sample_quality_plot(os.path.join(pictures_dir, "sample_quality.png"),
                                       results["sample_quality"]["rows"],
                                       results["sample_quality"]["floor"]["fcd"])
    results["pictures"]["sample_quality_plot"] = os.path.join("pictures", "sample_quality.png")
  results["claims"] = verdicts(results)
  results["rules"] = RULES
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(_markdown(results, results["claims"]))
  return results
