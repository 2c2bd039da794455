"""Run configuration: Python dataclasses, defaults reproducing the TensorFlow tutorial.

    python -m experiments.mnist_vae --data idx:../shared/data/mnist --workdir /tmp/cvae

trains the tutorial's model (latent 50, batch 100, Adam 1e-4, 100 epochs); the tutorial printed a
test-set ELBO of -78.33 at the end.
"""

import dataclasses

from vae_jax.errors import UserError

# Settings that only some models or objectives read (Model.settings, Objective.settings;
# vae_jax.nn.resolve refuses one changed from its default that the run's model or objective ignores).
MODEL_SETTINGS = ("conv_transpose", "hidden_sizes", "activation")
OBJECTIVE_SETTINGS = ("kl", "beta", "iw_samples", "kl_warmup_epochs", "free_bits", "denoise")


def flag(field: str) -> str:
  return "--" + field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; saved as the workdir's config.json."""
  # data
  data: str = "auto"                 # tfds:NAME | idx:DIR | mnist-5k | auto
  train_size: int | None = None      # use only the first N training examples
  batch_size: int = 100              # global batch, split over devices and hosts
  binarize: str = "threshold"        # 'threshold': pixel >= 0.5 (the seed); 'dynamic': each epoch's
                                     # pixels ~ Bernoulli(intensity/255), test set drawn once
  # model
  model: str = "cvae"                # a name in vae_jax.nn.models.MODELS: cvae | mlp | mlp_ae | conv_ae
  latent_dim: int = 50               # 2 gives the latent-manifold picture
  hidden_sizes: tuple[int, ...] = (200, 200)  # mlp, mlp_ae: hidden layer widths (decoder reversed)
  activation: str = "tanh"           # mlp, mlp_ae: hidden activation (vae_jax.nn.models.ACTIVATIONS)
  conv_transpose: str = "gemm"       # 'gemm': every conv as exact GEMMs; 'xla': Flax's Conv layers
  dtype: str = "float32"             # 'bfloat16': mixed precision, float32 everywhere except the
                                     # GEMM inputs (float32 accumulation; vae_jax.nn.layers)
  # objective and optimizer
  objective: str = "elbo"            # a name in vae_jax.nn.objectives.OBJECTIVES: elbo | iwae | bce | l2 | l1
  kl: str = "mc"                     # elbo: 'mc', the seed's one-sample estimate; 'analytic': closed form
  beta: float = 1.0                  # elbo, iwae: weight of the KL term (beta-VAE)
  iw_samples: int = 1                # iwae: importance samples k per example
  kl_warmup_epochs: int = 0          # elbo, iwae: KL weight rises linearly from 0 to beta over N epochs
  free_bits: float = 0.0             # elbo: each latent dimension's KL counts at least this (nats)
  denoise: float = 0.0               # probability each input pixel is flipped in training (clean target)
  learning_rate: float = 1e-4        # Adam, as the tutorial (--lr-schedule burda: its base, 1e-3)
  lr_schedule: str = "constant"      # a name in vae_jax.training.schedules.SCHEDULES: constant |
                                     # burda (the IWAE paper's 3,280-epoch protocol, plain Adam)
  # training loop
  epochs: int = 100
  seed: int = 0                      # fixes init, shuffling and every noise draw
  loop: str = "scan"                 # 'scan': epochs as jitted lax.scan chunks; 'step': one jit per batch
  steps_per_chunk: int = 0           # batches per jitted scan; 0: the backend's default (train.py)
  micro_batches: int = 0             # parts each step's batch is split into for the gradient
                                     # (same sum); 0: 2 on one CPU device at batch >= 100, else 1 (train.py)
  parallel: str = "auto"             # none | sharded | pmap | auto (sharded when >1 device)
  devices: int | None = None         # sharded/pmap over this many devices (None: all visible)
  # outputs
  num_samples: int = 16              # generated digits in each epoch's picture (a square number)
  num_reconstructions: int = 8       # fixed test digits reconstructed in each epoch's picture
  checkpoints_to_keep: int = 2

  def __post_init__(self):
    # config.json stores the tuple as a list; a run read back compares equal to the one written.
    object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))

  def validate(self) -> None:
    """Raises UserError with a one-line message for impossible plain values.

    The names (model, objective, activation) and which settings apply to them are checked where
    they are resolved, by `vae_jax.nn.resolve.check`.
    """
    def need(ok, message):
      if not ok:
        raise UserError(message)
    finite = lambda v: abs(v) < float("inf")
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
    need(self.binarize in ("threshold", "dynamic"),
         f"--binarize must be threshold or dynamic, got {self.binarize!r}")
    need(len(self.hidden_sizes) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden_sizes),
         f"--hidden-sizes must be positive integers, got {','.join(map(str, self.hidden_sizes))}")
    need(self.beta >= 0 and finite(self.beta), f"--beta must be >= 0 and finite, got {self.beta}")
    need(self.iw_samples >= 1, f"--iw-samples must be >= 1, got {self.iw_samples}")
    need(self.kl_warmup_epochs >= 0, f"--kl-warmup-epochs must be >= 0, got {self.kl_warmup_epochs}")
    need(self.free_bits >= 0 and finite(self.free_bits),
         f"--free-bits must be >= 0 and finite, got {self.free_bits}")
    need(0 <= self.denoise < 1, f"--denoise must be in [0, 1), got {self.denoise}")


def get_config() -> Config:
  """The tutorial run."""
  return Config()


def iwae_table1(objective: str = "elbo", iw_samples: int = 1, model: str = "mlp") -> Config:
  """The IWAE paper's Table 1 protocol (Burda, Grosse & Salakhutdinov 2016) on dynamically
  binarized MNIST: batch 20, 3,280 epochs of --lr-schedule burda, k=5000 evaluation. The paper's
  NLL for one stochastic layer (--model mlp): VAE 86.76, IWAE k=5 85.54, k=50 84.78 nats; two
  layers (--model mlp2): IWAE k=50 82.90. docs/iwae.md has the commands.
  """
  return dataclasses.replace(Config(), model=model, binarize="dynamic", batch_size=20,
                             lr_schedule="burda", learning_rate=1e-3, epochs=3280,
                             objective=objective, iw_samples=iw_samples)


def tiny() -> Config:
  """A seconds-long preset for tests and CI smoke runs."""
  return dataclasses.replace(Config(), latent_dim=2, batch_size=8, epochs=2, train_size=40,
                             steps_per_chunk=2)
