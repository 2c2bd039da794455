"""The peers the main job is compared with: the same model, loss and batches in other frameworks.

  tf_reference     the TensorFlow tutorial's code (model, loss, train_step), run on vae_jax.data
  keras_reference  the tutorial's Keras model, loss and Adam on Keras 3 with the JAX backend
  reference_cli    the flags, checks and data loading both of them share
  tf_golden        stores TF's outputs for fixed weights (tests/data/tf_golden.npz)

benchmarks.compare and benchmarks.throughput run them; tests/test_parity.py checks them.
"""
