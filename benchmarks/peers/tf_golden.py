"""Stores the TensorFlow tutorial model's numbers for fixed weights and inputs, for TF-free parity tests.

    python -m benchmarks.peers.tf_golden --out tests/data/tf_golden.npz

Machines without TensorFlow (the GPU machines) then check the Flax port against these stored
numbers in tests/test_golden_parity.py: forward pass, loss, gradients and one Keras Adam step.
"""

import numpy as np
import tensorflow as tf

from benchmarks.peers import tf_reference as tfr
from vae_jax import cli

BATCH, LATENT, LR = 8, 4, 1e-4


def golden() -> dict[str, np.ndarray]:
  """Flat {name: array}: inputs, weights (Flax layout), and TF's outputs for them."""
  tf.keras.utils.set_random_seed(0)
  model = tfr.CVAE(LATENT)
  rng = np.random.default_rng(1)
  for weights in tfr.tf_weights(model).values():  # non-zero biases, so their mapping is tested too
    weights["bias"].assign(0.1 * rng.normal(size=weights["bias"].shape).astype(np.float32))
  x = (rng.random((BATCH, 28, 28, 1)) > 0.5).astype(np.float32)
  eps = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
  out = {"x": x, "eps": eps}
  params = tfr.flax_params_from_tf(model)
  mean, logvar = model.encode(x)
  out.update(mean=mean.numpy(), logvar=logvar.numpy(),
             logits=model.decode(model.reparameterize(mean, logvar, eps)).numpy())
  variables = tfr.tf_weights(model)
  with tf.GradientTape() as tape:
    loss = tfr.compute_loss_with_eps(model, x, eps)
  grads_tf = tape.gradient(loss, variables)
  grads = tfr.convert_layout(tf.nest.map_structure(lambda g: g.numpy(), grads_tf))
  tf.keras.optimizers.Adam(LR).apply_gradients(
      zip(tf.nest.flatten(grads_tf), tf.nest.flatten(variables)))
  after = tfr.flax_params_from_tf(model)
  out["loss"] = np.float32(loss.numpy())
  for prefix, tree in (("param", params), ("grad", grads), ("after_adam", after)):
    for layer, arrays in tree.items():
      for key, value in arrays.items():
        out[f"{prefix}/{layer}/{key}"] = value
  return out


def main(argv=None) -> None:
  parser = cli.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True)
  np.savez_compressed(parser.parse_args(argv).out, **golden())


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
