"""The tutorial's CVAE with a local context term, `--model cvae_context`: the VAE carries the
global shape, a learned table over each pixel's already-coded neighbours the edges.

    logit(x_i | z, x_<i) = decoder(z)_i + table[context_i(x)]

context_i is the 16-bit index of pixel i's causal template (JBIG2's generic-region template 0,
`vae_jax.codec.context.TEMPLATE`, the codec's context coder's: pixels above and to the left,
outside the image 0). The model is autoregressive in raster order: training and likelihoods
condition on the image itself (`decode(z, x=x)`, one parallel pass); without x (samples,
reconstructions, the manifold) `decode` generates the image pixel by pixel, each pixel its most
probable value given z and the pixels before it, and returns the probabilities along that path.

The codec codes it exactly (`vae_jax.codec.integer`): the table is folded to integer logits in
the decoder's fixed point and added to the integer network's logits, and the decoder pops the
pixels position by position, vectorised over the images of a batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax import template as context_coder
from vae_jax.nn import models

HW = models.IMAGE_SHAPE[:2]
PIXELS = HW[0] * HW[1]


def contexts(x_BHWC) -> jax.Array:
  """(B, H*W) int32 context index of every pixel of {0,1} images, in raster order (the same
  numbers as `vae_jax.codec.context.contexts`)."""
  x = (x_BHWC[..., 0] > 0.5).astype(jnp.int32)
  b, h, w = x.shape
  pr, pc = context_coder.max_reach()
  padded = jnp.pad(x, ((0, 0), (pr, 0), (pc, pc)))
  index = jnp.zeros((b, h, w), jnp.int32)
  for t, (dr, dc) in enumerate(context_coder.TEMPLATE):
    index = index + (padded[:, pr + dr:pr + dr + h, pc + dc:pc + dc + w] << t)
  return index.reshape(b, h * w)


@models.register_model("cvae_context")
class ContextCVAE(models.CVAE):
  """The CVAE of `models.CVAE` plus `context_table`, one logit per template context."""
  autoregressive = True

  def __init__(self, latent_dim: int = 50, *, rngs: nnx.Rngs, conv_transpose="gemm",
               gemm_dtype=None):
    super().__init__(latent_dim, rngs=rngs, conv_transpose=conv_transpose, gemm_dtype=gemm_dtype)
    self.context_table = nnx.Param(jnp.zeros((context_coder.CONTEXTS,), jnp.float32))

  def decode(self, z_BxL, apply_sigmoid: bool = False, x=None):
    """Logits (or probabilities) of p(x|z) with the context of x; without x, of the image
    generated pixel by pixel (most probable values) from z."""
    vae = self.decode_logits(z_BxL).astype(jnp.float32)
    shape = vae.shape
    vae = vae.reshape(shape[0], -1)
    if x is None:
      logits = greedy_logits(vae, self.context_table[...])
    else:
      logits = vae + self.context_table[...][contexts(x)]
    logits = logits.reshape(shape)
    return nnx.sigmoid(logits) if apply_sigmoid else logits


def greedy_logits(vae_logits_BxP, table) -> jax.Array:
  """The logits along the raster-order path that takes each pixel's most probable value."""
  b = vae_logits_BxP.shape[0]
  pr, pc = context_coder.max_reach()
  width = HW[1] + 2 * pc
  positions = jnp.asarray(context_coder.canvas_positions(*HW), jnp.int32)
  offsets = jnp.asarray(context_coder.canvas_offsets(HW[1]), jnp.int32)
  weights = jnp.asarray(1 << np.arange(len(context_coder.TEMPLATE)), jnp.int32)

  def step(i, carry):
    canvas, logits = carry
    pos = positions[i]
    ctx = canvas[:, pos + offsets] @ weights
    logit = vae_logits_BxP[:, i] + table[ctx]
    canvas = canvas.at[:, pos].set((logit > 0).astype(jnp.int32))
    return canvas, logits.at[:, i].set(logit)

  canvas = jnp.zeros((b, (HW[0] + pr) * width), jnp.int32)
  _, logits = jax.lax.fori_loop(0, PIXELS, step, (canvas, jnp.zeros_like(vae_logits_BxP)))
  return logits
