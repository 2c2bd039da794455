"""The IWAE paper's two-stochastic-layer VAE, `--model mlp2` (Burda, Grosse & Salakhutdinov 2016).

    q(z1|x)  = N(mean, exp(logvar)) from 784 - 100 - 100 - (100, 100)
    q(z2|z1) = N(mean, exp(logvar)) from 100 - 50 - 50 - (50, 50)
    p(z2)    = N(0, I)
    p(z1|z2) = N(mean, exp(logvar)) from 50 - 50 - 50 - (100, 100)
    p(x|z1)  = Bernoulli(logits) from 100 - 100 - 100 - 784

hidden layers tanh (--activation). latent_dim is the top layer's size (z2, 50 in the paper); z1
has 2 * latent_dim units. One sample of both layers comes from one noise vector of
noise_dim = 3 * latent_dim units (z1's first), so the objectives and the importance-sampled
likelihood treat it like any model:

    log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1).

encode(x) is q(z1|x) and decode(z1) is p(x|z1) (reconstructions); sample(eps) decodes the mean
of p(z1|z2) for top-layer noise z2 = eps.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax.config import Config
from vae_jax.nn import layers, losses, models


class _Gaussian(nnx.Module):
  """in - hidden... - (mean, logvar) of a diagonal Gaussian of `out` units (hidden activation)."""

  def __init__(self, sizes: tuple[int, ...], out: int, activation: str, *, rngs: nnx.Rngs,
               gemm_dtype, outputs: int = 2):
    init = dict(kernel_init=models.KERNEL_INIT, bias_init=models.BIAS_INIT, gemm_dtype=gemm_dtype,
                rngs=rngs)
    self.activation = activation
    self.hidden = nnx.List([layers.Linear(a, b, **init) for a, b in zip(sizes, sizes[1:])])
    self.out = layers.Linear(sizes[-1], outputs * out, **init)

  def __call__(self, h):
    act = models.ACTIVATIONS[self.activation]
    return layers.sequential(h, *(f for layer in self.hidden for f in (layer, act)), self.out)

  def split(self, h):
    mean, logvar = jnp.split(self(h), 2, axis=-1)
    return mean, logvar


@models.register_model("mlp2")
class MLP2VAE(models.Model):
  """Two stochastic layers, z1 (2 * latent_dim) and z2 (latent_dim); see the module docstring."""
  settings = ("activation",)
  gaussian_latent = False

  def __init__(self, latent_dim: int = 50, activation: str = "tanh", *, rngs: nnx.Rngs,
               z1_dim: int | None = None, hidden1: int | None = None, hidden2: int | None = None,
               gemm_dtype=None):
    if latent_dim < 1:
      raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if activation not in models.ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(models.ACTIVATIONS)}, "
                       f"got {activation!r}")
    self.latent_dim = latent_dim
    self.z1_dim = z1_dim or 2 * latent_dim
    h1, h2 = hidden1 or self.z1_dim, hidden2 or latent_dim
    kw = dict(activation=activation, rngs=rngs, gemm_dtype=gemm_dtype)
    self.q_z1 = _Gaussian((models.IMAGE_SIZE, h1, h1), self.z1_dim, **kw)
    self.q_z2 = _Gaussian((self.z1_dim, h2, h2), latent_dim, **kw)
    self.p_z1 = _Gaussian((latent_dim, h2, h2), self.z1_dim, **kw)
    self.p_x = _Gaussian((self.z1_dim, h1, h1), models.IMAGE_SIZE, outputs=1, **kw)

  @classmethod
  def from_config(cls, config: Config, rngs: nnx.Rngs):
    return cls(config.latent_dim, config.activation, rngs=rngs,
               gemm_dtype=models.gemm_dtype_of(config))

  @property
  def noise_dim(self) -> int:
    return self.z1_dim + self.latent_dim

  def encode(self, x_BHWC):
    """(mean, logvar) of q(z1|x), each (batch, z1_dim)."""
    return self.q_z1.split(layers.flatten(x_BHWC))

  def decode_logits(self, z1):
    return layers.reshape(*models.IMAGE_SHAPE)(self.p_x(z1))

  def latent(self, posterior, eps) -> models.Latent:
    """z1 ~ q(z1|x), z2 ~ q(z2|z1) from eps (batch, ..., noise_dim), and both layers' densities."""
    mean1, logvar1 = posterior
    expand = lambda a: a.reshape(a.shape[:1] + (1,) * (eps.ndim - a.ndim) + a.shape[1:])
    mean1, logvar1 = expand(mean1), expand(logvar1)
    eps1, eps2 = eps[..., :self.z1_dim], eps[..., self.z1_dim:]
    z1 = models.reparameterize_with_eps(eps1.astype(mean1.dtype), mean1, logvar1)
    mean2, logvar2 = self.q_z2.split(z1)
    z2 = models.reparameterize_with_eps(eps2.astype(mean2.dtype), mean2, logvar2)
    f32 = lambda *a: tuple(t.astype(jnp.float32) for t in a)

    def log_q():
      z1_, mean1_, logvar1_, z2_, mean2_, logvar2_ = f32(z1, mean1, logvar1, z2, mean2, logvar2)
      return (losses.log_normal_pdf(z1_, mean1_, logvar1_)
              + losses.log_normal_pdf(z2_, mean2_, logvar2_))

    def log_p():
      prior_mean, prior_logvar = f32(*self.p_z1.split(z2))
      z1_, z2_ = f32(z1, z2)
      return losses.log_normal_pdf(z2_, 0.0, 0.0) + losses.log_normal_pdf(z1_, prior_mean,
                                                                          prior_logvar)

    return models.Latent(z1, log_q, log_p, (mean1, mean2))

  def sample(self, key=None, n: int = 100, eps_BxL=None):
    """Decoded probabilities of z1 = the mean of p(z1|z2), z2 ~ N(0, I) from `key` (or eps)."""
    if eps_BxL is None:
      if key is None:
        raise ValueError("sample needs a jax.random key or eps_BxL")
      eps_BxL = jax.random.normal(key, (n, self.latent_dim))
    z1, _ = self.p_z1.split(eps_BxL)
    return self.decode(z1, apply_sigmoid=True)
