"""Tools on trained runs for research: numbers to compare with the literature.

  likelihood   the importance-sampled log-likelihood (Burda et al. 2016), chunked over samples
  evaluation   a run's test-set likelihood report (experiments.evaluate)

A new metric of a trained model goes here, as a module of its own.
"""
