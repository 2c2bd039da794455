"""Run configuration: Python dataclasses, defaults reproducing the TensorFlow tutorial.

    python -m experiments.mnist_vae --data idx:../shared/data/mnist --workdir /tmp/cvae

trains the tutorial's model (latent 50, batch 100, Adam 1e-4, 100 epochs); the tutorial printed a
test-set ELBO of -78.33 at the end.
"""

import dataclasses

from vae_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; saved as the workdir's config.json."""
  # data
  data: str = "auto"                 # tfds:NAME | idx:DIR | mnist-5k | auto
  train_size: int | None = None      # use only the first N training examples
  batch_size: int = 100              # global batch, split over devices and hosts
  # model
  latent_dim: int = 50               # 2 gives the latent-manifold picture
  conv_transpose: str = "gemm"       # 'gemm': every conv as exact GEMMs; 'xla': Flax's Conv layers
  dtype: str = "float32"             # compute dtype of the layers; 'bfloat16' is an option on GPU
  # objective and optimizer
  kl: str = "mc"                     # 'mc': the seed's one-sample estimate; 'analytic': closed form
  learning_rate: float = 1e-4        # Adam, as the tutorial
  # training loop
  epochs: int = 100
  seed: int = 0                      # fixes init, shuffling and every noise draw
  loop: str = "scan"                 # 'scan': epochs as jitted lax.scan chunks; 'step': one jit per batch
  steps_per_chunk: int = 0           # batches per jitted scan; 0: the backend's default (train.py)
  micro_batches: int = 0             # parts each step's batch is split into for the gradient
                                     # (same sum); 0: 2 on a single CPU device, else 1 (train.py)
  parallel: str = "auto"             # none | sharded | pmap | auto (sharded when >1 device)
  devices: int | None = None         # sharded/pmap over this many devices (None: all visible)
  # outputs
  num_samples: int = 16              # generated digits in each epoch's picture (a square number)
  num_reconstructions: int = 8       # fixed test digits reconstructed in each epoch's picture
  checkpoints_to_keep: int = 2

  def validate(self) -> None:
    """Raises UserError with a one-line message for impossible settings."""
    def need(ok, message):
      if not ok:
        raise UserError(message)
    need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
    need(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
    need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
    need(self.learning_rate > 0 and self.learning_rate < float("inf"),
         f"--learning-rate must be a positive finite number, got {self.learning_rate}")
    need(self.train_size is None or self.train_size >= 1,
         f"--train-size must be >= 1, got {self.train_size}")
    need(self.conv_transpose in ("gemm", "xla"),
         f"--conv-transpose must be gemm or xla, got {self.conv_transpose!r}")
    need(self.dtype in ("float32", "bfloat16"), f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
    need(self.kl in ("mc", "analytic"), f"--kl must be mc or analytic, got {self.kl!r}")
    need(self.loop in ("scan", "step"), f"--loop must be scan or step, got {self.loop!r}")
    need(self.steps_per_chunk >= 0, f"--steps-per-chunk must be >= 0, got {self.steps_per_chunk}")
    need(self.micro_batches >= 0, f"--micro-batches must be >= 0, got {self.micro_batches}")
    need(self.micro_batches == 0 or self.batch_size % self.micro_batches == 0,
         f"--batch-size {self.batch_size} does not split into {self.micro_batches} micro-batches")
    need(self.devices is None or self.devices >= 1, f"--devices must be >= 1, got {self.devices}")
    need(self.parallel in ("auto", "none", "sharded", "pmap"),
         f"--parallel must be none, sharded, pmap or auto, got {self.parallel!r}")
    need(int(self.num_samples ** 0.5) ** 2 == self.num_samples and self.num_samples > 0,
         f"num_samples must be a positive square number, got {self.num_samples}")


def get_config() -> Config:
  """The tutorial run."""
  return Config()


def tiny() -> Config:
  """A seconds-long preset for tests and CI smoke runs."""
  return dataclasses.replace(Config(), latent_dim=2, batch_size=8, epochs=2, train_size=40,
                             steps_per_chunk=2)
