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
  assert v["elbo_within_peer_range"] is within and v["peer"] == "tf"
  assert v["peer_final_test_elbo_range"] == [-95.0, -93.0]
  assert "the TF range [-95.00, -93.00] (min..max of 3 TF seeds)" in v["text"]
  assert v["jax_final_test_elbo"] == pytest.approx(sum(jax_final) / len(jax_final))
  assert where in v["text"]
  assert v["throughput_ratio"] == pytest.approx(2.5)
  assert "2.50x" in v["text"] and "JAX is faster" in v["text"]


@pytest.mark.parametrize("jax_final,within", [([-100.9], True), ([-99.05], True), ([-101.1], False),
                                              ([-98.8], False)])
def test_verdict_with_one_tf_seed_allows_one_nat(jax_final, within):
  v = report.verdict(jax_final, [-100.0], 50.0, 100.0)
  assert v["elbo_within_peer_range"] is within
  assert v["peer_final_test_elbo_range"] == [-101.0, -99.0]
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
  assert r["frameworks"] == ["jax", "tf"] and r["precision"] == {"jax": "float32", "tf": "float32"}
  assert r["verdict"]["tf"]["elbo_within_peer_range"] is True
  assert r["verdict"]["tf"]["jax_final_test_elbo"] == pytest.approx(-145.0)
  assert r["verdict"]["tf"]["throughput_ratio"] == pytest.approx(4.0)
  assert r["verdict"]["text"] == r["verdict"]["tf"]["text"]
  report.write(r, str(tmp_path))
  assert json.loads((tmp_path / "report.json").read_text()) == r
  md = (tmp_path / "report.md").read_text()
  assert r["verdict"]["text"] in md
  assert "| epoch | JAX (float32) | TF (float32) |" in md
  assert "| 2 | -145.00 [-150.00, -140.00] | -144.50 [-148.00, -141.00] |" in md
  assert "| training images/s (steady state) | 400 | 100 | 4.00x |" in md
  assert "| precision | float32 | float32 |  |" in md
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
  assert r["verdict"]["tf"]["throughput_ratio"] == pytest.approx(1.0)
  assert r["verdict"]["tf"]["throughput_round_ratios"] == pytest.approx([0.8, 1.25, 1.0])
  assert r["jax"]["step_ms_median"] == 2.0 and r["jax"]["images_per_sec"] == 300.0
  assert r["jax"]["images_per_sec_rounds"] == [80.0, 125.0, 300.0]
  assert "median of 3 alternating rounds (0.80, 1.25, 1.00)" in r["verdict"]["text"]
  report.write(r, str(tmp_path))
  assert "| 2 | 125 | 100 | 1.25x |" in (tmp_path / "report.md").read_text()


def test_three_frameworks_each_peer_its_own_median_round(tmp_path):
  # JAX/TF per round: 2.0, 1.0, 3.0 (median: round 1); JAX/Keras: 10, 12, 11 (median: round 3).
  jax_runs = [_throughput(200.0), _throughput(120.0), _throughput(330.0)]
  tf_runs = [_throughput(100.0), _throughput(120.0), _throughput(110.0)]
  keras_runs = [_throughput(20.0), _throughput(10.0), _throughput(30.0)]
  for i, run in enumerate(keras_runs):
    run["step_ms_median"] = float(10 + i)
  rows = {"jax": _rows([[-150.0, -120.0]]), "tf": _rows([[-160.0, -121.0]]),
          "keras_jax": _rows([[-170.0, -119.5]])}
  r = report.build(rows, {"jax": jax_runs, "tf": tf_runs, "keras_jax": keras_runs},
                   precision={"jax": "bfloat16", "tf": "mixed_bfloat16", "keras_jax": "float32"},
                   skipped={}, command=["x"], runs=[], date="today",
                   settings={"data": "synthetic", "epochs": 2, "train_size": None, "seeds": [0],
                             "batch_size": 100, "latent_dim": 50},
                   machine={"cpu": "test cpu", "cores": 2, "platform": "test"}, versions={})
  assert r["frameworks"] == ["jax", "tf", "keras_jax"]
  tf_v, keras_v = r["verdict"]["tf"], r["verdict"]["keras_jax"]
  assert tf_v["throughput_round_ratios"] == pytest.approx([2.0, 1.0, 3.0])
  assert keras_v["throughput_round_ratios"] == pytest.approx([10.0, 12.0, 11.0])
  assert tf_v["throughput_ratio"] == pytest.approx(2.0)     # round 1
  assert keras_v["throughput_ratio"] == pytest.approx(11.0)  # round 3
  # Each peer's numbers come from its own median round; JAX's from the median JAX/TF round.
  assert r["keras_jax"]["images_per_sec"] == 30.0 and r["keras_jax"]["step_ms_median"] == 12.0
  assert r["tf"]["images_per_sec"] == 100.0 and r["jax"]["images_per_sec"] == 200.0
  # One seed each, so +- 1 nat: JAX's final -120 lies in TF's [-122, -120] and Keras' [-120.5, -118.5].
  assert tf_v["elbo_within_peer_range"] is True and keras_v["elbo_within_peer_range"] is True
  assert "the Keras on JAX range [-120.50, -118.50]" in keras_v["text"]
  assert "JAX/Keras on JAX = 11.00x (330 vs 30 images/s" in keras_v["text"]
  assert r["verdict"]["text"] == tf_v["text"] + " " + keras_v["text"]
  assert r["precision"] == {"jax": "bfloat16", "tf": "mixed_bfloat16", "keras_jax": "float32"}
  report.write(r, str(tmp_path))
  md = (tmp_path / "report.md").read_text()
  assert "| epoch | JAX (bfloat16) | TF (mixed_bfloat16) | Keras on JAX (float32) |" in md
  assert "| training images/s (steady state) | 200 | 100 | 30 | 2.00x | 11.00x |" in md
  assert "| 3 | 330 | 110 | 30 | 3.00x | 11.00x |" in md
  assert "| precision | bfloat16 | mixed_bfloat16 | float32 |  |  |" in md
  assert tf_v["text"] in md and keras_v["text"] in md
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_skipped_frameworks(tmp_path):
  r = report.build({"jax": _rows([[-150.0]]), "tf": _rows([[-150.0]])},
                   {"jax": _throughput(100.0), "tf": _throughput(100.0)},
                   skipped={"keras_jax": "keras is not installed"}, command=["x"], runs=[],
                   date="today", settings={"data": "synthetic", "epochs": 1, "train_size": None,
                                           "seeds": [0], "batch_size": 100, "latent_dim": 50},
                   machine={"cpu": "test cpu", "cores": 2, "platform": "test"}, versions={})
  assert r["skipped"] == {"keras_jax": "keras is not installed"} and "keras_jax" not in r
  report.write(r, str(tmp_path))
  assert "Skipped: Keras on JAX (keras is not installed)." in (tmp_path / "report.md").read_text()


def test_a_report_needs_the_port_and_a_peer():
  with pytest.raises(ValueError, match="needs 'jax' and a peer"):
    report.build({"jax": _rows([[-150.0]])}, {"jax": _throughput(100.0)})


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--data", "idx:/no/such/dir"], "/no/such/dir: directory not found"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--frameworks", "jax,torch"], "--frameworks: unknown torch"),
    (["--frameworks", "tf,jax"], "--frameworks must start with jax"),
    (["--frameworks", "jax"], "no peer to compare with (only jax given)"),
    (["--tf-precision", "float16"], "invalid choice: 'float16'"),
    (["--steps-per-chunk", "-1"], "--steps-per-chunk must be >= 0"),
])
def test_bad_flags_are_one_line_errors(argv, message, tmp_path, capsys):
  out = tmp_path / "new"
  with pytest.raises(SystemExit) as e:
    compare.main([*argv, "--out", str(out)])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not out.exists()


def test_a_peer_that_is_not_installed_is_skipped(tmp_path, monkeypatch):
  real = compare.importlib.util.find_spec
  monkeypatch.setattr(compare.importlib.util, "find_spec",
                      lambda name, *a: None if name == "keras" else real(name, *a))
  args = compare.parse_args(["--data", "mnist-5k", "--out", str(tmp_path / "new")])
  assert args.frameworks == ["jax", "tf"]
  assert args.skipped == {"keras_jax": "keras is not installed"}


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
          "--batch-size", "50", "--steps", "2", "--steps-per-chunk", "1", "--throughput-rounds", "1",
          "--out", str(out)]
  # Without the suite's --xla_backend_optimization_level=0 (conftest): here the runs' steps, not
  # their compiles, are most of the time (Keras's throughput round ran 45 s at level 0, 13 s without)
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  done = subprocess.run([sys.executable, "-m", "benchmarks.compare", *argv], capture_output=True,
                        text=True, timeout=600, check=False,
                        env=dict(os.environ, XLA_FLAGS=flags.strip()))
  assert done.returncode == 0, done.stderr[-2000:]
  r = json.loads((out / "report.json").read_text())
  assert r["command"][-len(argv):] == argv
  for key in ("machine", "versions", "date", "settings", "runs"):
    assert r[key]
  names = ["jax", "tf", "keras_jax"]  # all three are installed in the test environment
  assert r["frameworks"] == names and r["skipped"] == {}
  assert r["precision"] == {n: "float32" for n in names}
  for name in names:
    assert len(r[name]["test_elbo"]) == 1 and len(r[name]["test_elbo"][0]) == 1
    assert -1000 < r[name]["test_elbo"][0][0] < 0
    for key in report.THROUGHPUT:
      assert key in r[name]
    assert r[name]["images_per_sec"] > 0 and r[name]["step_ms_p90"] >= r[name]["step_ms_median"]
    assert math.isfinite(r[name]["compile_seconds"]) and r[name]["compile_seconds"] > 0
  # The verdicts are what the report's own numbers say.
  for peer in names[1:]:
    assert r["verdict"][peer] == report.verdict(
        r["jax"]["test_elbo"][0][-1:], r[peer]["test_elbo"][0][-1:], r["jax"]["images_per_sec"],
        r[peer]["images_per_sec"], [r["jax"]["images_per_sec"] / r[peer]["images_per_sec"]], peer)
    assert r["verdict"][peer]["text"] in (out / "report.md").read_text()
  assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The references write the main job's row keys.
  for name in names:
    row = json.loads((out / name / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(ROW_KEYS) <= set(row), (name, row)
  for name in names:
    throughput = json.loads((out / f"throughput_{name}_round1.json").read_text())
    assert throughput["precision"] == "float32"
    assert throughput["steps_per_call"] == 1, name  # --steps-per-chunk 1 (TF: one step a call)
