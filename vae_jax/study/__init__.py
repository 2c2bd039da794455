"""The article's autoencoder study (experiments.autoencoder_study) and what only it uses.

  config          the study's settings (StudyConfig), plain Python, checked before JAX loads
  runner          which runs the study needs, training or reusing them, measuring them
  report          the study's report.md from the measured numbers
  pictures        the study's figures
  classifier      the small MNIST classifier whose features score samples
  sample_quality  Fréchet classifier distance and the classifier score
  latent          Gaussian mixtures over autoencoder codes (sampling a plain AE fairly)
"""
