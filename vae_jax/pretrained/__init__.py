"""Trained models shipped inside the package, so the codec works right after `pip install .`.

Each lives in a folder of this package: `params.npz` (every parameter, keyed by its path in the
model, e.g. `enc_conv1/kernel`), `config.json` and `metrics.jsonl` of the run that trained it, and a
README with the command that made it. `export(workdir, name)` writes such a folder from a run's
newest checkpoint; `load(name)` builds the model from it.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
from flax import nnx

from vae_jax.config import Config
from vae_jax.errors import UserError

DEFAULT = "cvae_context_mnist"   # `--model pretrained`: the shortest lossless files on digits
LOSSY = "cvae_mnist"             # ... with --lossy (a context model has no lossy mode)
_HERE = os.path.dirname(os.path.abspath(__file__))
PARAMS, CONFIG, METRICS, README = "params.npz", "config.json", "metrics.jsonl", "README.md"


def path(name: str = DEFAULT) -> str:
  return os.path.join(_HERE, name)


def available() -> list[str]:
  return sorted(d for d in os.listdir(_HERE) if os.path.isfile(os.path.join(_HERE, d, PARAMS)))


def _key(path_tuple) -> str:
  return "/".join(map(str, path_tuple))


def params_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """Every parameter of the model as a numpy array, keyed by its path."""
  return {_key(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def build(config: Config, params: dict[str, np.ndarray]) -> nnx.Module:
  """The config's model with the given parameters (every one of them, of matching shape)."""
  from vae_jax.training import train  # pylint: disable=import-outside-toplevel
  graphdef, state = train.abstract_state(config)
  flat = nnx.to_flat_state(state.params)
  keys = {_key(p) for p, _ in flat}
  if keys != set(params):
    raise UserError(f"parameters do not fit the model: missing {sorted(keys - set(params))}, "
                    f"unexpected {sorted(set(params) - keys)}")
  for p, variable in flat:
    value, like = params[_key(p)], variable.get_value()  # like: a jax.ShapeDtypeStruct
    if value.shape != like.shape or value.dtype != like.dtype:
      raise UserError(f"parameter {_key(p)}: {value.dtype}{value.shape} does not fit the model's "
                      f"{like.dtype}{like.shape}")
    variable.set_value(jax.numpy.asarray(value))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load(name: str = DEFAULT) -> tuple[Config, nnx.Module, list[dict]]:
  """(config, model, metrics rows) of a shipped model."""
  if not os.path.isfile(os.path.join(path(name), PARAMS)):
    raise UserError(f"no pretrained model {name!r} in the package (have: {', '.join(available()) or 'none'})")
  return load_folder(path(name))


def load_folder(folder: str) -> tuple[Config, nnx.Module, list[dict]]:
  """(config, model, metrics rows) from a folder that `export` wrote."""
  with open(os.path.join(folder, CONFIG)) as f:
    config = Config(**json.load(f))
  with np.load(os.path.join(folder, PARAMS)) as npz:
    params = {k: npz[k] for k in npz.files}
  rows = []
  if os.path.exists(os.path.join(folder, METRICS)):
    with open(os.path.join(folder, METRICS)) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  return config, build(config, params), rows


_DESCRIPTIONS = {
    "cvae": "The tutorial's convolutional VAE",
    "cvae_context": ("The tutorial's convolutional VAE with a learned logit per pixel's causal "
                     "16-pixel context (`--model cvae_context`)"),
}


def export(workdir: str, out_dir: str, command: str) -> str:
  """Writes a shipped-model folder from the run in `workdir` (its newest checkpoint)."""
  from vae_jax.training import run  # pylint: disable=import-outside-toplevel
  config, epoch, model = run.restore_model(workdir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise UserError(f"{out_dir} is not empty")
  os.makedirs(out_dir, exist_ok=True)
  np.savez_compressed(os.path.join(out_dir, PARAMS), **params_dict(model))
  with open(os.path.join(out_dir, CONFIG), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
    f.write("\n")
  rows = run.read_metrics(workdir)
  if rows:
    shutil.copyfile(os.path.join(workdir, run.METRICS_FILE), os.path.join(out_dir, METRICS))
  last = rows[-1] if rows else {}
  with open(os.path.join(out_dir, README), "w") as f:
    f.write(f"# {os.path.basename(os.path.abspath(out_dir))}\n\n"
            f"{_DESCRIPTIONS.get(config.model, f'The model `{config.model}`')} "
            f"(latent {config.latent_dim}) trained by this "
            f"project's main job for {epoch} epochs on `{config.data}`, parameters only "
            f"(float32, `{PARAMS}`; the optimizer state is left out).\n\n"
            f"Trained with:\n\n```bash\n{command}\n```\n\n"
            f"Final test ELBO {last.get('test_elbo', float('nan')):.2f} nats "
            f"(reconstruction {last.get('test_rec', float('nan')):.2f}, KL "
            f"{last.get('test_kl', float('nan')):.2f}); every epoch in `{METRICS}`, the settings in "
            f"`{CONFIG}`. Exported with:\n\n```bash\npython -m experiments.compress export "
            f"--workdir WORKDIR --out {os.path.relpath(out_dir)}\n```\n")
  return out_dir


def resolve(spec: str, lossy: bool = False) -> tuple[Config, nnx.Module, list[dict]]:
  """--model: `pretrained` (DEFAULT, or LOSSY for lossy coding), `pretrained:NAME`, a model
  folder (`export`'s, e.g. from `compress fit`), else a run's workdir (its newest checkpoint)."""
  if spec == "pretrained" or spec.startswith("pretrained:"):
    return load(spec.partition(":")[2] or (LOSSY if lossy else DEFAULT))
  if os.path.isfile(os.path.join(spec, PARAMS)):
    return load_folder(spec)
  from vae_jax.training import run  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(spec):
    raise UserError(f"--model {spec}: not a run's workdir (directory not found) nor 'pretrained'")
  config, _, model = run.restore_model(spec)
  return config, model, run.read_metrics(spec)
