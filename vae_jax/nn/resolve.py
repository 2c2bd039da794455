"""Where a run's model and objective names are resolved and checked against its settings.

The config holds plain values (vae_jax.config); the registries own the names (MODELS in
vae_jax.nn.models, OBJECTIVES in vae_jax.nn.objectives). `check(config)` is the one place that
puts them together: every entry point calls it before building anything.
"""

from vae_jax.config import MODEL_SETTINGS, OBJECTIVE_SETTINGS, Config, flag
from vae_jax.errors import UserError
from vae_jax.nn import models, objectives


def check(config: Config) -> tuple[type[models.Model], objectives.Objective]:
  """config.validate(), then the names, the model/objective pair and the settings each one reads.

  Returns (the model class, the objective); raises UserError with a one-line message.
  """
  config.validate()
  model = models.get_model_class(config.model)
  objective = objectives.get_objective(config.objective)
  if config.activation not in models.ACTIVATIONS:
    raise UserError(f"--activation must be one of {', '.join(sorted(models.ACTIVATIONS))}, "
                    f"got {config.activation!r}")
  if objective.stochastic is not None and objective.stochastic != model.stochastic:
    kind = lambda stochastic: "a VAE" if stochastic else "a deterministic autoencoder"
    fits = sorted(n for n, o in objectives.OBJECTIVES.items()
                  if o.stochastic in (None, model.stochastic))
    raise UserError(f"--objective {config.objective} needs {kind(objective.stochastic)} but "
                    f"--model {config.model} is {kind(model.stochastic)}; use --objective "
                    f"{' | '.join(fits)}")
  _check_applies(config, model.settings, MODEL_SETTINGS, f"--model {config.model}")
  if not model.gaussian_latent and (config.kl != "mc" or config.free_bits):
    raise UserError(f"--model {config.model} has several stochastic layers; --kl analytic and "
                    "--free-bits need one Gaussian layer under N(0, I)")
  if objective.settings is not None:
    _check_applies(config, objective.settings, OBJECTIVE_SETTINGS,
                   f"--objective {config.objective}")
  return model, objective


def _check_applies(config: Config, used, candidates, who: str) -> None:
  """Refuses a setting changed from its default that `who` would silently ignore."""
  defaults = Config()
  for name in candidates:
    if name not in used and getattr(config, name) != getattr(defaults, name):
      reads = (", ".join(flag(n) for n in candidates if n in used)
               or f"none of {', '.join(map(flag, candidates))}")
      raise UserError(f"{flag(name)} does not apply to {who}, which reads {reads}")
