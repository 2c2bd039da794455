"""vae_jax: a JAX/Flax NNX port of the TensorFlow convolutional VAE tutorial, and what grew on it.

The package, from the ground up (each floor imports only the floors below it;
tests/test_layout.py checks it):

  errors, config, data,       the ground floor: one-line user errors, the run's plain settings,
  machine, interrupts,        datasets and binarization, machine facts, Ctrl-C/SIGTERM requests,
  batched                     batched host loops
  nn/                         the model side: kernels, layers, models, losses, objectives.
                              A new model or objective goes here (or registers from your module)
  training/                   one run: the jitted step, the run loop, checkpoints, workdir,
                              parallelism, pictures, TensorBoard
  research/                   tools on trained runs: importance-sampled likelihood, evaluation.
                              A new metric goes here
  study/                      the article's autoencoder study and the measurements it alone uses
  codec/                      compression with a trained model; a new codec goes here
  pretrained/                 models shipped inside the package
  cli                         the one way in for every entry point (experiments/, benchmarks/)
"""

__version__ = "0.1.0"
