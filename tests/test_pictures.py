"""The pictures' latent grid: the tutorial's standard-normal quantiles, against scipy's."""

import numpy as np
from scipy.special import ndtri

from vae_jax.training import pictures


def test_manifold_grid_is_the_normal_quantile_grid():
  n = 7
  q = ndtri(np.linspace(0.05, 0.95, n))
  grid = pictures.manifold_grid(n)
  assert grid.shape == (n * n, 2) and grid.dtype == np.float32
  # Row-major picture order: z0 runs along a row, z1 falls from the top row down.
  np.testing.assert_allclose(grid[:n, 0], q, rtol=1e-6)
  np.testing.assert_allclose(grid[::n, 1], q[::-1], rtol=1e-6)
  assert np.all(grid[:n, 1] == grid[0, 1]) and np.all(grid[::n, 0] == grid[0, 0])
