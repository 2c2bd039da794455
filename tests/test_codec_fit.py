"""`compress fit` end to end on tiny data: a model folder that the codec takes."""

import numpy as np

from experiments import compress
from vae_jax import pretrained
from vae_jax.codec import files, images


def test_fit_writes_a_model_folder_the_codec_takes(idx_dir, tmp_path, capsys):
  out = tmp_path / "my_model"
  tiny = ["--epochs", "1", "--batch-size", "8", "--latent-dim", "4"]
  assert compress.main(["fit", "--data", f"idx:{idx_dir}", "--out", str(out), *tiny]) == 0
  capsys.readouterr()
  config, model, rows = pretrained.load_folder(str(out))
  assert config.latent_dim == 4 and config.kl == "analytic" and len(rows) == 1
  assert "compress fit" in (out / pretrained.README).read_text()
  assert pretrained.resolve(str(out))[0] == config  # what --model takes
  assert compress.main(["fit", "--data", f"idx:{idx_dir}", "--out", str(out), *tiny]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "exists" in err[0]
  codec = files.Codec(model, config)
  x = images.load(f"idx:{idx_dir}", "test", 6)
  raw, _ = codec.encode_lossless(x)
  np.testing.assert_array_equal(codec.decode(raw, "mem")[0], x)
