"""The model side: everything that defines what is computed, nothing about how a run is driven.

  kernels      exact GEMM forms of convolutions with their own VJPs (fast on XLA:CPU)
  layers       Linear, GemmConv, GemmConvTranspose: Flax's parameter layout over those kernels
  models       the model registry (MODELS, @register_model) and the built-in models
  cvae_context the CVAE with a learned logit per pixel's causal context (--model cvae_context)
  mlp2         the IWAE paper's two-stochastic-layer VAE (--model mlp2), registered on import
  losses       log-likelihoods, KL terms, reconstruction errors: small pure functions
  objectives   the objective registry (OBJECTIVES, @register_objective): ELBO, IWAE, AE losses
  resolve      check(config): a run's model and objective names against its settings

A new model subclasses `models.Model` under `@models.register_model(name)`; a new objective is a
function under `@objectives.register_objective(name)`; either may live in your own module
(`--import MODULE`).
"""

from vae_jax.nn import cvae_context  # noqa: F401  registers --model cvae_context
from vae_jax.nn import mlp2  # noqa: F401  registers --model mlp2 in models.MODELS
