"""FCD and the MNIST score against closed forms computed independently in numpy."""

import math

import numpy as np
import pytest

from vae_jax.study import sample_quality


def _sqrtm_psd(a):
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet_closed_form(m1, c1, m2, c2):
  """||m1 - m2||^2 + Tr(c1 + c2 - 2 (c1^1/2 c2 c1^1/2)^1/2): symmetric square roots only."""
  r1 = _sqrtm_psd(c1)
  return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2)
               - 2 * np.trace(_sqrtm_psd(r1 @ c2 @ r1)))


@pytest.fixture
def features():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(8, 8))
  return rng.normal(size=(2000, 8)) @ mixing + rng.normal(size=8)


def test_fcd_of_a_set_against_itself_is_zero(features):
  assert abs(sample_quality.frechet_distance(features, features)) < 1e-8


def test_fcd_of_a_pure_shift_is_the_squared_shift_and_grows_with_it(features):
  direction = np.random.default_rng(1).normal(size=8)
  distances = []
  for scale in (0.1, 0.5, 1.0, 3.0):
    shift = scale * direction
    distance = sample_quality.frechet_distance(features, features + shift)
    np.testing.assert_allclose(distance, np.sum(shift ** 2), rtol=1e-6, atol=1e-8)
    distances.append(distance)
  assert np.all(np.diff(distances) > 0)


def test_fcd_of_two_gaussians_matches_the_closed_form():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)  # not commuting
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  np.testing.assert_allclose(sample_quality.frechet_distance_from_stats(m1, c1, m2, c2),
                             _frechet_closed_form(m1, c1, m2, c2), rtol=1e-8)
  # Diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 over the axes.
  s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  np.testing.assert_allclose(
      sample_quality.frechet_distance_from_stats(np.zeros(3), np.diag(s1), np.ones(3), np.diag(s2)),
      3.0 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2), rtol=1e-10)


def test_fcd_from_samples_is_their_gaussians_distance():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(500, 3))
  y = rng.normal(size=(400, 3)) * np.array([1.0, 2.0, 0.5]) + 1.0
  stats = [(v.mean(0), np.cov(v.T)) for v in (x, y)]
  np.testing.assert_allclose(sample_quality.frechet_distance(x, y),
                             _frechet_closed_form(*stats[0], *stats[1]), rtol=1e-8)


def test_fcd_survives_singular_covariances():
  x = np.zeros((50, 4))
  x[:, 0] = np.arange(50)  # rank-1 covariance, three constant features
  assert abs(sample_quality.frechet_distance(x, x)) < 1e-3
  assert sample_quality.frechet_distance(x, x + 2.0) == pytest.approx(16.0, abs=1e-3)


def _kl_score(probs):
  marginal = probs.mean(0)
  kl = np.sum(probs * (np.log(probs) - np.log(marginal)), axis=1)
  return math.exp(kl.mean())


def test_mnist_score_of_uniform_and_one_hot_predictions():
  uniform = sample_quality.mnist_score(np.full((30, 10), 0.1))
  assert uniform["confidence"] == pytest.approx(0.1)
  assert uniform["entropy"] == pytest.approx(math.log(10))
  assert uniform["label_entropy"] == pytest.approx(math.log(10))
  assert uniform["score"] == pytest.approx(1.0)

  spread = sample_quality.mnist_score(np.eye(10)[np.arange(30) % 10])
  assert spread["confidence"] == pytest.approx(1.0)
  assert spread["entropy"] == pytest.approx(0.0)
  assert spread["label_entropy"] == pytest.approx(math.log(10))
  assert spread["score"] == pytest.approx(10.0)
  assert spread["label_counts"] == [3] * 10

  collapsed = sample_quality.mnist_score(np.eye(10)[np.full(30, 7)])
  assert collapsed["label_entropy"] == pytest.approx(0.0)
  assert collapsed["score"] == pytest.approx(1.0)


def test_mnist_score_matches_the_kl_definition():
  probs = np.random.default_rng(4).dirichlet(np.full(10, 0.3), size=200)
  score = sample_quality.mnist_score(probs)
  assert score["score"] == pytest.approx(_kl_score(probs), rel=1e-10)
  assert score["confidence"] == pytest.approx(probs.max(1).mean())
  marginal = probs.mean(0)
  assert score["label_entropy"] == pytest.approx(-np.sum(marginal * np.log(marginal)))


def test_softmax_rows_sum_to_one_and_match_numpy():
  logits = np.random.default_rng(5).normal(size=(7, 10)) * 30
  p = sample_quality.softmax(logits)
  np.testing.assert_allclose(p.sum(1), 1.0)
  np.testing.assert_allclose(p, np.exp(logits - logits.max(1, keepdims=True))
                             / np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
