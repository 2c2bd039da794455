"""benchmarks.compare: the report's arithmetic on made-up numbers, its refusals, and one tiny end-to-end run."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import compare, report

ROW_KEYS = ("epoch", "train_loss", "test_elbo", "images_per_sec", "compile_seconds", "train_seconds",
            "eval_seconds", "seconds")


def test_spread_is_per_epoch_over_seeds():
  s = report.spread([[-100.0, -90.0], [-104.0, -86.0], [-99.0, -91.0]])
  assert s == {"mean": [-101.0, -89.0], "min": [-104.0, -91.0], "max": [-99.0, -86.0]}


@pytest.mark.parametrize("jax_final,within,where", [
    ([-94.5, -93.9], True, "lies within"),
    ([-95.0], True, "lies within"),             # the range's ends belong to it
    ([-96.0, -96.5], False, "1.25 nats below"),
    ([-92.0], False, "1.00 nats above"),
])
def test_verdict_uses_the_tf_seeds_min_max(jax_final, within, where):
  v = report.verdict(jax_final, [-95.0, -93.0, -94.0], 300.0, 120.0)
  assert v["elbo_within_tf_range"] is within
  assert v["tf_final_test_elbo_range"] == [-95.0, -93.0]
  assert v["jax_final_test_elbo"] == pytest.approx(sum(jax_final) / len(jax_final))
  assert where in v["text"]
  assert v["throughput_ratio"] == pytest.approx(2.5)
  assert "2.50x" in v["text"] and "JAX is faster" in v["text"]


@pytest.mark.parametrize("jax_final,within", [([-100.9], True), ([-99.05], True), ([-101.1], False),
                                              ([-98.8], False)])
def test_verdict_with_one_tf_seed_allows_one_nat(jax_final, within):
  v = report.verdict(jax_final, [-100.0], 50.0, 100.0)
  assert v["elbo_within_tf_range"] is within
  assert v["tf_final_test_elbo_range"] == [-101.0, -99.0]
  assert v["throughput_ratio"] == pytest.approx(0.5)
  assert "JAX is not faster" in v["text"]


def _throughput(images_per_sec):
  return {k: 1.0 for k in report.THROUGHPUT} | {"images_per_sec": images_per_sec, "device": "cpu",
                                                "device_peak_mib": None}


def _rows(curves):
  return [[{"epoch": e + 1, "test_elbo": v, "train_loss": -v, "seconds": 2.0, "train_seconds": 1.0}
           for e, v in enumerate(curve)] for curve in curves]


def test_build_takes_the_final_epoch_and_writes_all_three_files(tmp_path):
  # Final epochs: JAX -150, -140 (mean -145) inside TF's [-148, -141]; the first epochs would not be.
  rows = {"jax": _rows([[-200.0, -150.0], [-210.0, -140.0]]),
          "tf": _rows([[-160.0, -148.0], [-165.0, -141.0]])}
  r = report.build(rows, {"jax": _throughput(400.0), "tf": _throughput(100.0)},
                   command=["python", "-m", "benchmarks.compare"], runs=[], date="today",
                   settings={"data": "synthetic", "epochs": 2, "train_size": None, "seeds": [0, 1],
                             "batch_size": 100, "latent_dim": 50},
                   machine={"cpu": "test cpu", "cores": 2, "platform": "test"},
                   versions={"jax": "0"})
  assert r["jax"]["test_elbo"] == [[-200.0, -150.0], [-210.0, -140.0]]
  assert r["tf"]["train_loss"] == [[160.0, 148.0], [165.0, 141.0]]
  assert r["verdict"]["elbo_within_tf_range"] is True
  assert r["verdict"]["jax_final_test_elbo"] == pytest.approx(-145.0)
  assert r["verdict"]["throughput_ratio"] == pytest.approx(4.0)
  report.write(r, str(tmp_path))
  assert json.loads((tmp_path / "report.json").read_text()) == r
  md = (tmp_path / "report.md").read_text()
  assert r["verdict"]["text"] in md
  assert "| 2 | -145.00 [-150.00, -140.00] | -144.50 [-148.00, -141.00] |" in md
  assert "| training images/s (steady state) | 400 | 100 | 4.00x |" in md
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounds_report_the_round_with_the_median_ratio(tmp_path):
  # Round ratios 0.8, 1.25, 1.0: the median is round 3's, whose own numbers fill the table.
  jax_runs = [_throughput(80.0), _throughput(125.0), _throughput(300.0)]
  tf_runs = [_throughput(100.0), _throughput(100.0), _throughput(300.0)]
  for i, run in enumerate(jax_runs):
    run["step_ms_median"] = float(i)
  r = report.build({"jax": _rows([[-150.0]]), "tf": _rows([[-150.0]])},
                   {"jax": jax_runs, "tf": tf_runs}, command=["x"], runs=[], date="today",
                   settings={"data": "synthetic", "epochs": 1, "train_size": None, "seeds": [0],
                             "batch_size": 100, "latent_dim": 50},
                   machine={"cpu": "test cpu", "cores": 2, "platform": "test"}, versions={})
  assert r["verdict"]["throughput_ratio"] == pytest.approx(1.0)
  assert r["verdict"]["throughput_round_ratios"] == pytest.approx([0.8, 1.25, 1.0])
  assert r["jax"]["step_ms_median"] == 2.0 and r["jax"]["images_per_sec"] == 300.0
  assert r["jax"]["images_per_sec_rounds"] == [80.0, 125.0, 300.0]
  assert "median of 3 alternating rounds (0.80, 1.25, 1.00)" in r["verdict"]["text"]
  report.write(r, str(tmp_path))
  assert "| 2 | 125 | 100 | 1.25x |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--data", "idx:/no/such/dir"], "/no/such/dir: directory not found"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_one_line_errors(argv, message, tmp_path, capsys):
  out = tmp_path / "new"
  with pytest.raises(SystemExit) as e:
    compare.main([*argv, "--out", str(out)])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not out.exists()


def test_refuses_a_non_empty_out_dir(tmp_path, capsys):
  (tmp_path / "earlier.txt").write_text("keep me")
  with pytest.raises(SystemExit) as e:
    compare.main(["--data", "mnist-5k", "--out", str(tmp_path)])
  assert e.value.code == 2
  assert "is not an empty directory" in capsys.readouterr().err
  assert os.listdir(tmp_path) == ["earlier.txt"]
  assert (tmp_path / "earlier.txt").read_text() == "keep me"


def test_tiny_compare_end_to_end(tmp_path):
  out = tmp_path / "cmp"
  argv = ["--data", "mnist-5k", "--epochs", "1", "--train-size", "200", "--seeds", "1",
          "--batch-size", "50", "--steps", "10", "--throughput-rounds", "1", "--out", str(out)]
  done = subprocess.run([sys.executable, "-m", "benchmarks.compare", *argv], capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  r = json.loads((out / "report.json").read_text())
  assert r["command"][-len(argv):] == argv
  for key in ("machine", "versions", "date", "settings", "runs"):
    assert r[key]
  for name in ("jax", "tf"):
    assert len(r[name]["test_elbo"]) == 1 and len(r[name]["test_elbo"][0]) == 1
    assert -1000 < r[name]["test_elbo"][0][0] < 0
    for key in report.THROUGHPUT:
      assert key in r[name]
    assert r[name]["images_per_sec"] > 0 and r[name]["step_ms_p90"] >= r[name]["step_ms_median"]
    assert math.isfinite(r[name]["compile_seconds"]) and r[name]["compile_seconds"] > 0
  # The verdict is what the report's own numbers say.
  assert r["verdict"] == report.verdict(
      r["jax"]["test_elbo"][0][-1:], r["tf"]["test_elbo"][0][-1:], r["jax"]["images_per_sec"],
      r["tf"]["images_per_sec"], [r["jax"]["images_per_sec"] / r["tf"]["images_per_sec"]])
  assert r["verdict"]["text"] in (out / "report.md").read_text()
  assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The TF reference writes the main job's row keys.
  for name in ("jax", "tf"):
    row = json.loads((out / name / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(ROW_KEYS) <= set(row), (name, row)
