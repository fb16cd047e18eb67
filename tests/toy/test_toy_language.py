"""The synthetic language: structure, exact stationary distribution and entropy rate."""
from __future__ import annotations

import numpy as np
import pytest

from kscale.toy.language import LanguageSpec, MarkovLanguage


@pytest.fixture(scope="module")
def lang() -> MarkovLanguage:
    return MarkovLanguage(LanguageSpec())


def _brute_force_entropy_rate(probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Independent reference: build the V^2 x V^2 pair-chain matrix and take its left
    eigenvector for eigenvalue 1 with a dense eigen-solver (no power iteration)."""
    v = probs.shape[0]
    t = np.zeros((v * v, v * v))
    for a in range(v):
        for b in range(v):
            for c in range(v):
                t[a * v + b, b * v + c] = probs[a, b, c]
    w, vecs = np.linalg.eig(t.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    pi = pi / pi.sum()
    h = 0.0
    for s in range(v * v):
        row = t[s][t[s] > 0]
        h -= pi[s] * (row * np.log(row)).sum()
    return pi.reshape(v, v), float(h)


def test_transition_table_is_a_sparse_smoothed_distribution(lang):
    spec = lang.spec
    assert lang.probs.shape == (spec.vocab_size,) * 3
    np.testing.assert_allclose(lang.probs.sum(-1), 1.0, atol=1e-12)
    # Remove the Zipfian background: what is left sits on <= n_successors tokens per context.
    sparse = (lang.probs - spec.smoothing * lang.unigram) / (1 - spec.smoothing)
    support = (sparse > 1e-12).sum(-1)
    assert support.max() <= spec.n_successors
    assert support.mean() > spec.n_successors - 0.5  # Dirichlet weights are almost never ~0
    # successors of (a, b) come from b's preference set: at most n_bigram distinct per b
    per_b = (sparse > 1e-12).any(axis=0).sum(-1)
    assert per_b.max() <= spec.n_bigram
    assert len(set(lang.words)) == spec.vocab_size


def test_stationary_and_entropy_rate_match_brute_force_eigensolve():
    small = MarkovLanguage(LanguageSpec(vocab_size=7, n_bigram=4, n_successors=2, smoothing=0.05, seed=3))
    pi_ref, h_ref = _brute_force_entropy_rate(small.probs)
    np.testing.assert_allclose(small.stationary, pi_ref, atol=1e-10)
    assert small.entropy_rate == pytest.approx(h_ref, abs=1e-10)


def test_entropy_hierarchy(lang):
    # each extra token of context helps: H(unigram) > H(x_t | x_{t-1}) > entropy rate > 0,
    # and the levels are far apart, so model size has room to matter
    assert np.log(lang.spec.vocab_size) > lang.unigram_entropy > lang.bigram_entropy > lang.entropy_rate > 0
    assert lang.unigram_entropy - lang.bigram_entropy > 0.5
    assert lang.bigram_entropy - lang.entropy_rate > 0.5


def test_empirical_entropy_of_long_sample_matches_entropy_rate(lang):
    # 256 independent stationary chains x 1500 tokens; chain means are iid, so their standard
    # error bounds how far the empirical cross-entropy may be from the exact rate.
    x = lang.sample(256, 1500, np.random.SeedSequence([123]))
    nll = -lang.log_probs(x)  # [chains, 1498]
    chain_means = nll.mean(axis=1)
    se = chain_means.std(ddof=1) / np.sqrt(len(chain_means))
    assert se < 0.005  # the check below is sharp
    assert abs(nll.mean() - lang.entropy_rate) < 4 * se
    # and the sample is really stationary: its unigram frequencies match pi's marginal
    freq = np.bincount(x.ravel(), minlength=lang.spec.vocab_size) / x.size
    np.testing.assert_allclose(freq, lang.stationary.sum(0), atol=0.004)


def test_language_and_samples_are_deterministic():
    a, b = MarkovLanguage(LanguageSpec(vocab_size=16, seed=1)), MarkovLanguage(LanguageSpec(vocab_size=16, seed=1))
    c = MarkovLanguage(LanguageSpec(vocab_size=16, seed=2))
    np.testing.assert_array_equal(a.probs, b.probs)
    assert not np.array_equal(a.probs, c.probs)
    np.testing.assert_array_equal(a.sample(4, 50, 9), b.sample(4, 50, 9))
    assert not np.array_equal(a.sample(4, 50, 9), a.sample(4, 50, 10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vocab_size": 2}, "vocab_size must be in"),
        ({"n_successors": 20, "n_bigram": 12}, "n_successors <= n_bigram"),
        ({"smoothing": 0.0}, "smoothing must be in"),
        ({"alpha": -1.0}, "alpha must be > 0"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanguageSpec(**kwargs)
