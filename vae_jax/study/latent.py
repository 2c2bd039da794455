"""Points in a latent space to decode: a Gaussian mixture fitted to codes, and interpolations.

A plain autoencoder has no prior to sample; the fair way to sample one is to fit a density to the
codes of its training digits and draw from that (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders"): here scikit-learn's GaussianMixture, 10 full-covariance components.
"""

import numpy as np
from sklearn.mixture import GaussianMixture


def fit_gmm(codes, components: int = 10, seed: int = 0) -> GaussianMixture:
  """A `components`-component full-covariance Gaussian mixture fitted to (N, L) codes."""
  codes = np.asarray(codes, np.float64)
  if codes.ndim != 2 or len(codes) < components:
    raise ValueError(f"need (N >= {components}, L) codes to fit {components} components, "
                     f"got shape {codes.shape}")
  return GaussianMixture(components, covariance_type="full", random_state=seed,
                         reg_covar=1e-6).fit(codes)


def sample_gmm(gmm: GaussianMixture, n: int, seed: int = 0) -> np.ndarray:
  """(n, L) float32 draws from the mixture, in random order (sklearn returns them by component)."""
  draws, _ = gmm.sample(n)  # drawn with the mixture's own random_state: the same every call
  return np.random.default_rng(seed).permutation(draws).astype(np.float32)


def gmm_samples(codes, n: int, components: int = 10, seed: int = 0) -> np.ndarray:
  """n codes drawn from a Gaussian mixture fitted to `codes`."""
  return sample_gmm(fit_gmm(codes, components, seed), n, seed)


def interpolate(z_a, z_b, steps: int) -> np.ndarray:
  """(..., steps, L): (1 - t) z_a + t z_b at t = 0, 1/(steps-1), ..., 1, for (..., L) endpoints."""
  z_a, z_b = np.asarray(z_a, np.float32), np.asarray(z_b, np.float32)
  t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
  return (1.0 - t) * z_a[..., None, :] + t * z_b[..., None, :]
