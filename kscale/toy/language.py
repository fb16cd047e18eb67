"""The embedded synthetic language: a sparse order-2 Markov source with an exact entropy rate.

Why a synthetic language: a scaling-law fit ``L(N) = E + A / N**alpha`` has an irreducible
loss ``E`` that, for natural text, nobody knows. Here it is known exactly, so the fitted ``E``
of the toy ladder can be checked against ground truth (Dettmers & Zettlemoyer 2022 fit their
curves on real models; the toy family is the laptop-sized stand-in).

The generator (all randomness from ``numpy.random.default_rng(SeedSequence([seed, 0]))``):

1. **Vocabulary.** ``V`` pseudo-words built from consonant-vowel syllables; frequent words are
   short (Zipf's law of abbreviation). Token ``i`` has Zipfian weight ``z_i ∝ (i + 2.7)**-s``.
2. **Bigram layer.** Every word ``b`` gets a *preference set* ``B_b`` of ``n_bigram``
   distinct words drawn from ``z`` without replacement.
3. **Trigram layer.** Every context ``(a, b)`` gets ``n_successors`` distinct successors drawn
   from ``B_b`` (weighted by ``z``), with probabilities ``~ Dirichlet(alpha)``.
4. **Smoothing.** ``P(c | a, b) = (1 - eps) * sparse(c | a, b) + eps * z_c``, so every pair
   state reaches every other one in two steps: the pair chain is irreducible and aperiodic
   and has a unique stationary distribution.

Why this shape: the three layers make model size matter. A model that only
learns unigram frequencies pays ``H(z)`` (≈ 4 nats at the defaults); one that learns which
words follow ``b`` pays about ``log n_bigram``; only a model that memorises the ``V**2``
contexts (frequent ones first, since the stationary context distribution is Zipf-like)
approaches the entropy rate. Small models stop at the first plateaus, larger ones go further.

Why these defaults (issue 17 §1; ``zipf_exponent=0.8, n_bigram=16, smoothing=0.3``; earlier
``1.0, 12, 0.01``): a smooth scaling law needs the learnable structure spread over many contexts
of graded frequency, not concentrated in a few. With the earlier defaults the pair chain lived on
~300 contexts (98.5 % of the stationary mass; 100 held 86 %), so the loss a model saves by
memorising the top-``M`` contexts, ``G(M) = sum_{rank > M} pi(s) KL(P(.|s) || P(.|b))``, fell off a
cliff (log-log slopes -0.72, -1.71 between M = 30, 100, 300) and the ladder stepped: unigram
plateau, bigram plateau, then the whole trigram layer at once. A flatter Zipf law and a 30 %
background spread the mass (G slopes -0.15, -0.27, -0.46 over M = 10 .. 300), and the measured
16-bit ladder L2-d16 .. L2-d48 follows a power law (reducible-loss slopes -0.19, -0.26, -0.22).
The price: a higher entropy rate (2.48 instead of 0.95 nats/token; unigram 3.97, bigram 3.31).
The law holds in a window: the next rung, L2-d64, learns much more of the trigram layer and
drops off it (slope -0.99; kscale.toy.options.BEYOND_LADDER).

Entropy rate (exact, nats/token): the pair ``s_t = (x_{t-1}, x_t)`` is a first-order Markov
chain, so ``H = sum_s pi(s) * H(P(. | s))`` with ``pi`` its stationary distribution,
computed by power iteration to a 1e-14 L1 residual (``P`` is dense, ``V**3`` float64).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

log = logging.getLogger(__name__)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class LanguageSpec:
    """Everything that defines the synthetic language (and therefore its entropy rate).

    Attributes:
        vocab_size: number of words ``V`` (the dense transition table has ``V**3`` entries).
        zipf_exponent: ``s`` in ``z_i ∝ (i + 2.7)**-s``.
        n_bigram: size of each word's preference set ``B_b``.
        n_successors: successors per two-word context (drawn from ``B_b``).
        alpha: Dirichlet concentration of the successor probabilities (small = peaked).
        smoothing: ``eps``, the weight of the Zipfian background distribution.
        seed: seed of the language's *structure* (not of any sample drawn from it).
    """

    vocab_size: int = 128
    zipf_exponent: float = 0.8
    n_bigram: int = 16
    n_successors: int = 4
    alpha: float = 0.5
    smoothing: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        # canonical types, so YAML's `alpha: 1` and 1.0 define (and hash to) the same language
        for name in ("zipf_exponent", "alpha", "smoothing"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("vocab_size", "n_bigram", "n_successors", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if not 4 <= self.vocab_size <= 512:
            raise ValueError(
                f"vocab_size must be in [4, 512] (the transition table is dense, V**3); "
                f"got {self.vocab_size}"
            )
        if not 1 <= self.n_successors <= self.n_bigram <= self.vocab_size:
            raise ValueError(
                "need 1 <= n_successors <= n_bigram <= vocab_size; got "
                f"n_successors={self.n_successors}, n_bigram={self.n_bigram}, "
                f"vocab_size={self.vocab_size}"
            )
        if not 0.0 < self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in (0, 1) so the chain is ergodic; got {self.smoothing}")
        if self.alpha <= 0 or self.zipf_exponent < 0:
            raise ValueError(
                f"alpha must be > 0 and zipf_exponent >= 0; got alpha={self.alpha}, "
                f"zipf_exponent={self.zipf_exponent}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def make_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable words, shortest first (so frequent tokens are short)."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words: list[str] = []
    length = 1
    while len(words) < n:
        pool = list(syllables) if length == 1 else [w + s for w in pool for s in syllables]
        order = rng.permutation(len(pool))
        words.extend(pool[i] for i in order[: n - len(words)])
        length += 1
    return words


class MarkovLanguage:
    """A concrete language drawn from a :class:`LanguageSpec`.

    Attributes:
        spec: the defining spec.
        words: token id -> word (``len == vocab_size``).
        unigram: Zipfian background distribution ``z`` (``[V]``).
        probs: transition table ``P[a, b, c] = P(x_t = c | x_{t-2} = a, x_{t-1} = b)`` (``[V, V, V]``).
    """

    def __init__(self, spec: LanguageSpec | None = None) -> None:
        self.spec = spec or LanguageSpec()
        v = self.spec.vocab_size
        rng = np.random.default_rng(np.random.SeedSequence([self.spec.seed, 0]))
        self.words = make_words(v, rng)
        z = (np.arange(v) + 2.7) ** (-self.spec.zipf_exponent)
        self.unigram = z / z.sum()
        # Weighted sampling without replacement, vectorised with the Gumbel-top-k trick
        # (equivalent in distribution to drawing one by one proportionally to the weights).
        log_z = np.log(self.unigram)
        pref = np.argsort(-(log_z + rng.gumbel(size=(v, v))), axis=1)[:, : self.spec.n_bigram]  # [b, n_bigram]
        keys = log_z[pref][None, :, :] + rng.gumbel(size=(v, v, self.spec.n_bigram))  # [a, b, n_bigram]
        pick = np.argsort(-keys, axis=-1)[..., : self.spec.n_successors]
        succ = np.take_along_axis(np.broadcast_to(pref, (v, v, self.spec.n_bigram)), pick, axis=-1)
        weights = rng.dirichlet(np.full(self.spec.n_successors, self.spec.alpha), size=(v, v))
        sparse = np.zeros((v, v, v))
        np.put_along_axis(sparse, succ, weights, axis=-1)
        eps = self.spec.smoothing
        self.probs = (1.0 - eps) * sparse + eps * self.unigram[None, None, :]
        self._cdf = np.cumsum(self.probs, axis=-1)
        self._cdf[..., -1] = 1.0

    # ------------------------------------------------------------------ exact quantities
    @cached_property
    def stationary(self) -> np.ndarray:
        """Stationary distribution ``pi[a, b]`` of the pair chain (power iteration)."""
        v = self.spec.vocab_size
        pi = np.full((v, v), 1.0 / v**2)
        for it in range(100_000):
            nxt = np.einsum("ab,abc->bc", pi, self.probs)
            nxt /= nxt.sum()
            delta = np.abs(nxt - pi).sum()
            pi = nxt
            if delta < 1e-14:
                log.debug("stationary distribution converged after %d iterations", it + 1)
                return pi
        raise RuntimeError(f"power iteration did not converge (last L1 change {delta:.2e})")

    @cached_property
    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token: ``sum_s pi(s) H(P(.|s))``."""
        p = self.probs
        h_ctx = -(p * np.log(p)).sum(axis=-1)  # [V, V]; p > 0 everywhere thanks to smoothing
        return float((self.stationary * h_ctx).sum())

    @cached_property
    def unigram_entropy(self) -> float:
        """Entropy of the stationary single-token marginal: what a context-free model pays."""
        m = self.stationary.sum(axis=0)
        return float(-(m * np.log(m)).sum())

    @cached_property
    def bigram_entropy(self) -> float:
        """``H(x_t | x_{t-1})`` under stationarity: what a one-token-context model pays at best."""
        joint = np.einsum("ab,abc->bc", self.stationary, self.probs)  # P(x_{t-1}=b, x_t=c)
        cond = joint / joint.sum(axis=1, keepdims=True)
        return float(-(joint * np.log(cond)).sum())

    # ------------------------------------------------------------------ sampling
    def sample(self, n_chains: int, length: int, seed: int | np.random.SeedSequence) -> np.ndarray:
        """``[n_chains, length]`` int64 tokens from independent stationary chains.

        Each chain starts from a pair drawn from ``pi``, so every position is distributed
        as the stationary process (no burn-in bias). Deterministic given ``seed``.
        """
        if length < 2:
            raise ValueError(f"length must be >= 2 (the state is a token pair); got {length}")
        rng = np.random.default_rng(seed)
        v = self.spec.vocab_size
        out = np.empty((n_chains, length), dtype=np.int64)
        flat_pi = self.stationary.ravel()
        start = rng.choice(v * v, size=n_chains, p=flat_pi / flat_pi.sum())
        out[:, 0], out[:, 1] = np.divmod(start, v)
        u = rng.random((n_chains, length))
        for t in range(2, length):
            cdf = self._cdf[out[:, t - 2], out[:, t - 1]]  # [n_chains, V]
            out[:, t] = (cdf < u[:, t, None]).sum(axis=1)
        return out

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """``log P(x_t | x_{t-2}, x_{t-1})`` for ``t >= 2`` along the last axis."""
        tokens = np.asarray(tokens)
        return np.log(self.probs[tokens[..., :-2], tokens[..., 1:-1], tokens[..., 2:]])

    def decode(self, tokens: np.ndarray) -> str:
        """Token ids -> space-separated words."""
        return " ".join(self.words[int(i)] for i in np.asarray(tokens).ravel())
