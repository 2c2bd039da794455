"""vae_jax: a JAX/Flax NNX port of the TensorFlow convolutional VAE tutorial."""

__version__ = "0.1.0"
