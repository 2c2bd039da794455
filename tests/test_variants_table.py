"""benchmarks.variants_table: rows come from the run files, report never overwritten."""

import json
import os
import statistics

from benchmarks import variants_table


def _run(tmp_path, name, config, epochs, nll):
  d = tmp_path / name
  d.mkdir()
  (d / "config.json").write_text(json.dumps(config))
  rows = [{"epoch": e, "images_per_sec": 100.0 * e, "test_elbo": -200.0 + e, "test_rec": 150.0,
           "test_kl": 10.0, "seconds": 2.0} for e in range(1, epochs + 1)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  ev = {"settings": {"iw_samples": 7}, "results": {
      "nll": nll, "nll_se": 0.5, "nll_bits_per_dim": nll / 784 / 0.6931, "neg_elbo": nll + 3,
      "kl": 11.0, "rec": nll - 8, "active_units": 4, "latent_dim": 5, "test_images": 9,
      "nll_by_k": {"1": nll + 3, "7": nll}}, "versions": {"jax": "x"}}
  (d / "evaluation.json").write_text(json.dumps(ev))
  return str(d)


def test_table_from_files(tmp_path, capsys):
  a = _run(tmp_path, "a", {"model": "cvae", "objective": "elbo", "beta": 1.0}, 4, 90.0)
  b = _run(tmp_path, "b", {"model": "cvae", "objective": "elbo", "beta": 2.0}, 3, 95.5)
  out = tmp_path / "out"
  assert variants_table.main([a, b, "--out", str(out), "--reference", "paper=84.78"]) == 0
  report = json.loads((out / "report.json").read_text())
  ra, rb = report["rows"]
  assert ra["differs"] == {} and rb["differs"] == {"beta": 2.0}
  assert ra["images_per_sec"] == statistics.median([200.0, 300.0, 400.0])  # epochs after the first
  assert ra["test_objective"] == 200.0 - 4 and rb["nll"] == 95.5
  assert ra["test_neg_elbo"] == 150.0 + 10.0  # rec + KL, whatever the objective
  md = (out / "report.md").read_text()
  assert "95.50 ± 0.50 (k=7, 9 images)" in md and "| paper | 84.78 |" in md
  assert sorted(os.listdir(out / "runs" / "b")) == sorted(variants_table.FILES)
  # a second write to the same folder is refused, the first report kept
  capsys.readouterr()
  assert variants_table.main([a, "--out", str(out)]) == 2
  assert "error:" in capsys.readouterr().err and (out / "report.md").read_text() == md
