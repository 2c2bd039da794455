"""vae_jax.training.workdir: the saved settings a resumed run is compared with."""

import dataclasses
import json

from vae_jax.config import Config
from vae_jax.training import workdir


def test_a_field_added_after_a_run_was_saved_counts_as_its_default(tmp_path):
  workdir.write_config(str(tmp_path), Config())
  path = tmp_path / workdir.CONFIG_FILE
  saved = json.loads(path.read_text())
  del saved["lr_schedule"]  # as written before the field existed
  assert workdir.settings_differ(Config(), saved) == []
  assert workdir.settings_differ(dataclasses.replace(Config(), lr_schedule="burda"), saved) == [
      "lr_schedule"]
  assert workdir.settings_differ(dataclasses.replace(Config(), epochs=3), saved) == ["epochs"]
