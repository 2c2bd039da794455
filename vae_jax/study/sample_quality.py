"""Sample-quality numbers from a classifier: the Fréchet Classifier Distance and the "MNIST score".

FCD (Fréchet Classifier Distance, as TF-GAN's `mnist_frechet_distance`; not FID, which uses
Inception features) fits a Gaussian to each set of classifier features and returns

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)),

the squared 2-Wasserstein distance between the two Gaussians. It is biased upward for small sets:
compare only numbers computed with the same classifier and the same set sizes.

The MNIST score summarizes the classifier's predictions p(y|x) over a set of samples: how sure it is
(mean max-probability), how evenly the samples spread over the ten labels (entropy of the mean
label distribution p(y), at most ln 10 = 2.303 nats), and TF-GAN's `mnist_score`,
exp(E_x KL(p(y|x) || p(y))) (between 1 and 10; 10 for confident and evenly spread labels).
"""

import warnings

import numpy as np
import scipy.linalg

_SINGULAR_OFFSET = 1e-6
_IMAG_TOLERANCE = 1e-3  # relative size of the imaginary part sqrtm may leave from round-off


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of (N, D) features, in float64 (covariance with N - 1, as np.cov)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be (N >= 2, D), got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def frechet_distance_from_stats(mean_a, cov_a, mean_b, cov_b) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) of two Gaussians."""
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  diff = mean_a - mean_b
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
  if caught or not np.all(np.isfinite(covmean)):
    # A singular product (e.g. constant features, or fewer samples than features): offset both
    # covariances slightly, as pytorch-fid does, which changes the result by O(sqrt(eps)).
    offset = np.eye(len(cov_a)) * _SINGULAR_OFFSET
    covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  if np.iscomplexobj(covmean):
    scale = max(1.0, float(np.max(np.abs(covmean.real))))
    if np.max(np.abs(covmean.imag)) > _IMAG_TOLERANCE * scale:
      raise ValueError(f"sqrtm(S_a S_b) has a large imaginary part "
                       f"({np.max(np.abs(covmean.imag)):.3g}): the covariances are not valid")
    covmean = covmean.real
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def frechet_distance(features_a, features_b) -> float:
  """FCD between two (N, D) feature sets."""
  return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def softmax(logits) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _entropy(p, axis=-1):
  p = np.asarray(p, np.float64)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def mnist_score(probs) -> dict[str, float]:
  """Summary of (N, K) predicted label distributions p(y|x) (rows summing to 1).

  confidence: mean over x of max_y p(y|x); entropy: mean over x of H(p(y|x)); label_entropy:
  H(p(y)) of the mean distribution p(y) = E_x p(y|x); score: exp(E_x KL(p(y|x) || p(y))) =
  exp(label_entropy - entropy); label_counts: how many x have each arg-max label.
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or len(probs) == 0:
    raise ValueError(f"probs must be (N >= 1, K), got shape {probs.shape}")
  marginal = probs.mean(axis=0)
  entropy = float(np.mean(_entropy(probs)))
  label_entropy = float(_entropy(marginal))
  counts = np.bincount(np.argmax(probs, axis=-1), minlength=probs.shape[1])
  return {"confidence": float(np.mean(probs.max(axis=-1))), "entropy": entropy,
          "label_entropy": label_entropy, "score": float(np.exp(label_entropy - entropy)),
          "label_counts": counts.tolist()}
