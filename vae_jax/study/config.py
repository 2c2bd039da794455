"""The study's settings: a plain dataclass, checked before JAX loads (`StudyConfig.validate`)."""

import dataclasses

from vae_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Everything that defines a study; saved in report.json."""
  data: str = "auto"
  models: tuple[str, ...] = ("cvae", "mlp", "conv_ae", "mlp_ae")
  latent_sizes: tuple[int, ...] = (2, 4, 8, 16, 32, 50)
  # training budget, the same for every run (see experiments/autoencoder_study.py for the timing)
  epochs: int = 10
  train_size: int | None = None      # first N training digits (None: all)
  batch_size: int = 100
  learning_rate: float = 1e-3        # Adam; 10x the tutorial's, for the short budget
  seed: int = 0
  # the single latent size of the loss-choice, denoising and creativity parts
  focus_latent: int = 16
  loss_model: str = "conv_ae"
  losses: tuple[str, ...] = ("bce", "l2", "l1")
  denoise_models: tuple[str, ...] = ("conv_ae", "cvae")
  noise_levels: tuple[float, ...] = (0.1, 0.2, 0.3)
  # sample quality
  num_samples: int = 10_000          # per sampler, and at most this many real digits
  gmm_components: int = 10
  classifier_epochs: int = 5

  def validate(self) -> None:
    def need(ok, message):
      if not ok:
        raise UserError(message)
    need(self.models, "--models must name at least one model")
    need(len(set(self.models)) == len(self.models), f"--models repeats a model: {self.models}")
    need(self.latent_sizes and all(l >= 1 for l in self.latent_sizes),
         f"--latent-sizes must be positive integers, got {self.latent_sizes}")
    need(self.focus_latent in self.latent_sizes,
         f"--focus-latent {self.focus_latent} is not one of --latent-sizes {self.latent_sizes}")
    need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
    need(self.train_size is None or self.train_size >= 1,
         f"--train-size must be >= 1, got {self.train_size}")
    need(all(0.0 < p < 1.0 for p in self.noise_levels),
         f"--noise-levels must lie strictly between 0 and 1, got {self.noise_levels}")
    need(self.num_samples >= 2, f"--num-samples must be >= 2, got {self.num_samples}")
    need(self.gmm_components >= 1, f"gmm_components must be >= 1, got {self.gmm_components}")
    need(self.classifier_epochs >= 1,
         f"--classifier-epochs must be >= 1, got {self.classifier_epochs}")


def quick() -> StudyConfig:
  """A minutes-long preset for the test suite: latent sizes 2 and 4, one epoch, small sample sets."""
  return dataclasses.replace(StudyConfig(), latent_sizes=(2, 4), focus_latent=4, epochs=1,
                             noise_levels=(0.1,), num_samples=1000, classifier_epochs=1)
