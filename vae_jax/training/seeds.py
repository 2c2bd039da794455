"""Several seeds of one run, one after another: WORKDIR/seed_K/ is seed K's ordinary workdir.

    python -m experiments.mnist_vae --seeds 0,1,2 --workdir W ...    (--resume continues each)
    python -m experiments.evaluate --workdir W                        (every seed, mean and spread)

The seeds run one after another; each is an ordinary run, so the same seed alone (--seed K into
its own workdir) gives the same parameters.
"""

import dataclasses
import os
import re

from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.training import run
from vae_jax.training import workdir as workdir_lib

_SEED_DIR = re.compile(r"seed_(\d+)$")


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


def seed_workdirs(workdir: str) -> list[tuple[int, str]]:
  """[(seed, its workdir)] of the seed_K folders in `workdir` that hold a run, by seed."""
  if not os.path.isdir(workdir):
    return []
  found = []
  for name in os.listdir(workdir):
    match = _SEED_DIR.match(name)
    path = os.path.join(workdir, name)
    if match and os.path.exists(os.path.join(path, workdir_lib.CONFIG_FILE)):
      found.append((int(match.group(1)), path))
  return sorted(found)


def train_seeds(config: Config, workdir: str, seeds, resume: bool = False) -> dict[int, list]:
  """train_and_evaluate for config at each seed into workdir/seed_K, in the order given.

  With `resume`, each seed's run continues (a complete one only restores), and a seed not begun
  yet starts; without it, a seed folder that holds anything is refused as for any run.
  """
  seeds = list(seeds)
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise UserError(f"--seeds must be distinct integers >= 0, got {','.join(map(str, seeds))}")
  rows = {}
  for seed in seeds:
    path = seed_workdir(workdir, seed)
    begun = workdir_lib.read_config(path) is not None
    rows[seed] = run.train_and_evaluate(dataclasses.replace(config, seed=seed), path,
                                        resume=resume and begun)
  return rows


def check_same_run(runs: list[tuple[int, str]]) -> None:
  """Refuses seed folders whose saved configs differ in anything but the seed."""
  (first_seed, first_path), *rest = runs
  first = dict(workdir_lib.read_config(first_path) or {}, seed=None)
  for seed, path in rest:
    other = dict(workdir_lib.read_config(path) or {}, seed=None)
    differ = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
    if differ:
      raise UserError(f"seed_{seed} and seed_{first_seed} in {os.path.dirname(path)} are "
                      f"different runs (they differ in {', '.join(differ)}), not seeds of one")
