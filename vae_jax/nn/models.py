"""The models by name: the seed's convolutional VAE, a fully connected VAE and two autoencoders.

Every model is an `nnx.Module` with one small interface, so training, evaluation, sampling and
compression work on any of them:

  latent_dim          the size of the code z
  stochastic          True for VAEs (q(z|x) a diagonal Gaussian), False for autoencoders
  encode(x_BHWC)      VAEs: (mean, logvar), each (batch, latent_dim); autoencoders: (z, None)
  decode(z_BxL)       Bernoulli logits of p(x|z), (batch, 28, 28, 1); probabilities with
                      apply_sigmoid=True
  sample(key, n)      decoded probabilities of z ~ N(0, I) (for autoencoders only a picture)
  posterior(x_BHWC), latent(posterior, eps)
                      VAEs: z ~ q(z|x) from standard normal noise eps (..., noise_dim) with
                      log q(z|x) and log p(z) over every stochastic layer (`Latent`); the
                      objectives and the importance-sampled likelihood read only these. The
                      default is one diagonal Gaussian layer, (mean, logvar) = encode(x), under
                      p(z) = N(0, I); a model with more layers overrides both and sets
                      gaussian_latent = False (vae_jax.nn.mlp2)

A model registers under a name with `@register_model(name)` (from any module, also outside the
package) on a `Model` subclass that builds itself from the run's Config in `from_config`.
"""

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax.nn import layers, losses
from vae_jax.config import Config
from vae_jax.errors import UserError

IMAGE_SHAPE = (28, 28, 1)
IMAGE_SIZE = 28 * 28
# Keras' default initializers, so a fresh model is distributed like the TensorFlow original.
KERNEL_INIT = nnx.initializers.glorot_uniform()
BIAS_INIT = nnx.initializers.zeros_init()

ConvTransposeImpl = Literal["gemm", "xla"]
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "softplus": jax.nn.softplus, "elu": jax.nn.elu}

MODELS: dict[str, type["Model"]] = {}


def register_model(name: str):
  """Class decorator: makes a `Model` subclass available as Config(model=name) / --model name."""
  def register(cls):
    if name in MODELS:
      raise ValueError(f"a model named {name!r} is already registered ({MODELS[name].__name__})")
    MODELS[name] = cls
    return cls
  return register


def get_model_class(name: str) -> type["Model"]:
  if name not in MODELS:
    raise UserError(f"--model {name!r} is not registered; known: {', '.join(sorted(MODELS))}")
  return MODELS[name]


def create_model(config: Config, key: jax.Array) -> "Model":
  """The model named config.model, its parameters initialized from `key`."""
  return get_model_class(config.model).from_config(config, nnx.Rngs(params=key))


def gemm_dtype_of(config: Config):
  """The layers' GEMM input dtype: --dtype bfloat16 is mixed precision (float32 parameters,
  activations and loss; bfloat16 GEMM inputs, float32 accumulation; vae_jax.nn.layers)."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else None


class Latent(NamedTuple):
  """Samples z ~ q(z|x) with their log-densities; leading axes (batch, samples...) those of eps.

  The log-densities are functions, traced where the objective calls them (after decoding z, as
  the objectives always did), so the gradients' sums are accumulated in the same order as before.
  """
  z: jax.Array                   # what decode reads
  log_q: Callable[[], jax.Array]  # log q(z|x), summed over every stochastic layer, float32
  log_p: Callable[[], jax.Array]  # log p(z), the prior of every stochastic layer, float32
  means: tuple                   # E_q[z_i | the layer below] of each layer i (bottom first)


class Model(nnx.Module):
  """The interface of every registered model; subclasses define encode and decode_logits."""
  stochastic: bool = True
  # True: q(z|x) is encode's one diagonal Gaussian and p(z) = N(0, I), so the analytic KL, free
  # bits and the codec apply; False: only `latent` defines q and p (several stochastic layers).
  gaussian_latent: bool = True
  # True: p(x|z) also conditions on the image's own earlier pixels, so likelihoods call
  # decode(z, x=x) (`likelihood_logits`); decode(z) alone then generates the image.
  autoregressive: bool = False
  # Config fields the model reads besides latent_dim and dtype: setting any other
  # architecture field away from its default is refused at validation (see Config.validate).
  settings: tuple[str, ...] = ()
  latent_dim: int

  @classmethod
  def from_config(cls, config: Config, rngs: nnx.Rngs) -> "Model":
    """The model for a run's settings, its parameters drawn from rngs."""
    raise NotImplementedError

  def encode(self, x_BHWC):
    """VAEs: (mean, logvar) of q(z|x); autoencoders: (z, None)."""
    raise NotImplementedError

  def decode_logits(self, z_BxL):
    """Bernoulli logits of p(x|z), (batch, 28, 28, 1)."""
    raise NotImplementedError

  def decode(self, z_BxL, apply_sigmoid: bool = False):
    """Returns Bernoulli logits of p(x|z), (batch, 28, 28, 1); probabilities with apply_sigmoid."""
    x_logits = self.decode_logits(z_BxL)
    return nnx.sigmoid(x_logits) if apply_sigmoid else x_logits

  def __call__(self, x_BHWC, eps_BxL):
    """Encodes, reparameterizes with the given noise (the autoencoders' code is used as it is),
    decodes: (x_logits, z, mean, logvar)."""
    mean, logvar = self.encode(x_BHWC)
    z = reparameterize_with_eps(eps_BxL, mean, logvar) if self.stochastic else mean
    return likelihood_logits(self, z, x_BHWC), z, mean, logvar

  @property
  def noise_dim(self) -> int:
    """The size of the standard normal noise `latent` turns into one sample of every layer."""
    return self.latent_dim

  def posterior(self, x_BHWC):
    """What `latent` needs from the image, computed once per image: encode's (mean, logvar)."""
    return self.encode(x_BHWC)

  def latent(self, posterior, eps) -> Latent:
    """z ~ q(z|x) from eps (batch, ..., noise_dim): by default `one_gaussian_layer`."""
    return one_gaussian_layer(posterior, eps)

  def sample(self, key=None, n: int = 100, eps_BxL=None):
    """Decoded probabilities for eps ~ N(0, I) drawn from `key` (or the given eps)."""
    if eps_BxL is None:
      if key is None:
        raise ValueError("sample needs a jax.random key or eps_BxL")
      eps_BxL = jax.random.normal(key, (n, self.latent_dim))
    return self.decode(eps_BxL, apply_sigmoid=True)


def likelihood_logits(model, z, x):
  """Logits of p(x|z) for the image x: `decode(z, x=x)` for an autoregressive model (x has z's
  batch), else `decode(z)`."""
  if getattr(model, "autoregressive", False):
    return model.decode(z, x=x)
  return model.decode(z)


def one_gaussian_layer(posterior, eps) -> Latent:
  """z = mean + exp(logvar / 2) eps for posterior (mean, logvar) and eps (batch, ..., latent_dim),
  with log q(z|x) and log p(z) = log N(z; 0, I) in float32."""
  mean, logvar = posterior
  expand = lambda a: a.reshape(a.shape[:1] + (1,) * (eps.ndim - a.ndim) + a.shape[1:])
  mean, logvar = expand(mean), expand(logvar)
  z = reparameterize_with_eps(eps.astype(mean.dtype), mean, logvar)
  z32, mean32, logvar32 = (a.astype(jnp.float32) for a in (z, mean, logvar))
  return Latent(z, lambda: losses.log_normal_pdf(z32, mean32, logvar32),
                lambda: losses.log_normal_pdf(z32, 0.0, 0.0), (mean,))


def latent_interface(model):
  """(posterior, latent, noise_dim, gaussian_latent) of a VAE: a Model's own, or for any module
  with only encode -> (mean, logvar), decode and latent_dim, one Gaussian layer's."""
  return (getattr(model, "posterior", model.encode), getattr(model, "latent", one_gaussian_layer),
          getattr(model, "noise_dim", model.latent_dim), getattr(model, "gaussian_latent", True))


def _check_latent_dim(latent_dim: int) -> None:
  if latent_dim < 1:
    raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")


class _ConvNets(Model):
  """The tutorial's two Sequentials; the encoder's dense layer has `code_size` outputs."""
  settings = ("conv_transpose",)

  def __init__(self, latent_dim: int, code_size: int, *, rngs: nnx.Rngs,
               conv_transpose: ConvTransposeImpl, gemm_dtype):
    _check_latent_dim(latent_dim)
    if conv_transpose not in ("gemm", "xla"):
      raise ValueError(f"conv_transpose must be 'gemm' or 'xla', got {conv_transpose!r}")
    self.latent_dim = latent_dim
    self.conv_transpose = conv_transpose
    init = dict(kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, gemm_dtype=gemm_dtype, rngs=rngs)
    conv = dict(impl=conv_transpose, **init)
    relu = jax.nn.relu
    # inference_net: Conv2D(32, 3, 2, relu), Conv2D(64, 3, 2, relu), Flatten, Dense(code_size)
    self.enc_conv1 = layers.GemmConv(1, 32, (3, 3), 2, padding="VALID", activation=relu, **conv)
    self.enc_conv2 = layers.GemmConv(32, 64, (3, 3), 2, padding="VALID", activation=relu, **conv)
    self.enc_dense = layers.Linear(6 * 6 * 64, code_size, **init)
    # generative_net: Dense(7*7*32, relu), Reshape, Conv2DTranspose(64, 3, 2, relu),
    # Conv2DTranspose(32, 3, 2, relu), Conv2DTranspose(1, 3, 1)
    self.dec_dense = layers.Linear(latent_dim, 7 * 7 * 32, **init)
    self.dec_deconv1 = layers.GemmConvTranspose(32, 64, (3, 3), 2, padding="SAME",
                                                activation=relu, **conv)
    self.dec_deconv2 = layers.GemmConvTranspose(64, 32, (3, 3), 2, padding="SAME",
                                                activation=relu, **conv)
    self.dec_deconv3 = layers.GemmConvTranspose(32, 1, (3, 3), 1, padding="SAME", **conv)

  @classmethod
  def from_config(cls, config, rngs: nnx.Rngs):
    return cls(config.latent_dim, rngs=rngs, conv_transpose=config.conv_transpose,
               gemm_dtype=gemm_dtype_of(config))

  def _code(self, x_BHWC):
    return layers.sequential(x_BHWC, self.enc_conv1, self.enc_conv2, layers.flatten,
                             self.enc_dense)

  def decode_logits(self, z_BxL):
    return layers.sequential(z_BxL, self.dec_dense, jax.nn.relu, layers.reshape(7, 7, 32),
                             self.dec_deconv1, self.dec_deconv2, self.dec_deconv3)


@register_model("cvae")
class CVAE(_ConvNets):
  """Convolutional VAE of the TensorFlow tutorial: q(z|x) diagonal Gaussian, p(x|z) Bernoulli logits."""

  def __init__(self, latent_dim: int = 50, *, rngs: nnx.Rngs,
               conv_transpose: ConvTransposeImpl = "gemm", gemm_dtype=None):
    super().__init__(latent_dim, 2 * latent_dim, rngs=rngs, conv_transpose=conv_transpose,
                     gemm_dtype=gemm_dtype)

  def encode(self, x_BHWC):
    """Returns (mean, logvar) of q(z|x), each (batch, latent_dim)."""
    mean, logvar = jnp.split(self._code(x_BHWC), 2, axis=-1)
    return mean, logvar


@register_model("conv_ae")
class ConvAE(_ConvNets):
  """The seed's encoder and decoder around one deterministic latent vector."""
  stochastic = False

  def __init__(self, latent_dim: int = 50, *, rngs: nnx.Rngs,
               conv_transpose: ConvTransposeImpl = "gemm", gemm_dtype=None):
    super().__init__(latent_dim, latent_dim, rngs=rngs, conv_transpose=conv_transpose,
                     gemm_dtype=gemm_dtype)

  def encode(self, x_BHWC):
    """Returns (z, None): the code, (batch, latent_dim)."""
    return self._code(x_BHWC), None


class _MLPNets(Model):
  """784 - hidden_sizes - code_size encoder, latent_dim - reversed(hidden_sizes) - 784 decoder."""
  settings = ("hidden_sizes", "activation")

  def __init__(self, latent_dim: int, code_size: int, hidden_sizes, activation: str, *,
               rngs: nnx.Rngs, gemm_dtype):
    _check_latent_dim(latent_dim)
    if not hidden_sizes or min(hidden_sizes) < 1:
      raise ValueError(f"hidden_sizes must be positive sizes, got {hidden_sizes}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    self.latent_dim = latent_dim
    self.activation = activation
    init = dict(kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, gemm_dtype=gemm_dtype, rngs=rngs)
    sizes = (IMAGE_SIZE, *hidden_sizes)
    self.enc_hidden = nnx.List([layers.Linear(a, b, **init) for a, b in zip(sizes, sizes[1:])])
    self.enc_out = layers.Linear(sizes[-1], code_size, **init)
    sizes = (latent_dim, *reversed(hidden_sizes))
    self.dec_hidden = nnx.List([layers.Linear(a, b, **init) for a, b in zip(sizes, sizes[1:])])
    self.dec_out = layers.Linear(sizes[-1], IMAGE_SIZE, **init)

  @classmethod
  def from_config(cls, config, rngs: nnx.Rngs):
    return cls(config.latent_dim, hidden_sizes=tuple(config.hidden_sizes),
               activation=config.activation, rngs=rngs, gemm_dtype=gemm_dtype_of(config))

  def _mlp(self, h, hidden, out):
    act = ACTIVATIONS[self.activation]
    return layers.sequential(h, *(f for layer in hidden for f in (layer, act)), out)

  def _code(self, x_BHWC):
    return self._mlp(layers.flatten(x_BHWC), self.enc_hidden, self.enc_out)

  def decode_logits(self, z_BxL):
    return layers.reshape(*IMAGE_SHAPE)(self._mlp(z_BxL, self.dec_hidden, self.dec_out))


@register_model("mlp")
class MLPVAE(_MLPNets):
  """Fully connected VAE; the defaults are the IWAE paper's one-stochastic-layer net,
  784-200-200-50 tanh (Burda et al. 2016)."""

  def __init__(self, latent_dim: int = 50, hidden_sizes=(200, 200), activation: str = "tanh", *,
               rngs: nnx.Rngs, gemm_dtype=None):
    super().__init__(latent_dim, 2 * latent_dim, hidden_sizes, activation, rngs=rngs,
                     gemm_dtype=gemm_dtype)

  def encode(self, x_BHWC):
    """Returns (mean, logvar) of q(z|x), each (batch, latent_dim)."""
    mean, logvar = jnp.split(self._code(x_BHWC), 2, axis=-1)
    return mean, logvar


@register_model("mlp_ae")
class MLPAE(_MLPNets):
  """The "vanilla" fully connected autoencoder: one deterministic code per image."""
  stochastic = False

  def __init__(self, latent_dim: int = 50, hidden_sizes=(200, 200), activation: str = "tanh", *,
               rngs: nnx.Rngs, gemm_dtype=None):
    super().__init__(latent_dim, latent_dim, hidden_sizes, activation, rngs=rngs,
                     gemm_dtype=gemm_dtype)

  def encode(self, x_BHWC):
    """Returns (z, None): the code, (batch, latent_dim)."""
    return self._code(x_BHWC), None


def reparameterize_with_eps(eps, mean, logvar):
  """z = mean + exp(logvar / 2) * eps."""
  return eps * jnp.exp(logvar * 0.5) + mean


def reparameterize(key, mean, logvar):
  """z ~ q(z|x) = N(mean, exp(logvar)), drawn with the given key."""
  return reparameterize_with_eps(jax.random.normal(key, mean.shape, mean.dtype), mean, logvar)
