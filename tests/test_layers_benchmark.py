"""benchmarks.layers: every layer is timed, and its output file is never overwritten."""

import json

import pytest

from benchmarks import layers


def test_jax_layers_all_timed_and_out_is_new(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(layers, "BATCH", 2)  # the shapes' batch only: seconds, not minutes
  out = tmp_path / "jax.json"
  assert layers.main(["--framework", "jax", "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  assert result["framework"] == "jax" and result["batch_size"] == 2
  assert set(result["fwd_bwd_ms"]) == set(layers.LAYERS)
  assert all(0 < ms < 1e4 for ms in result["fwd_bwd_ms"].values())
  assert json.loads(capsys.readouterr().out) == result
  with pytest.raises(SystemExit):
    layers.main(["--framework", "jax", "--out", str(out)])
  assert json.loads(out.read_text()) == result
