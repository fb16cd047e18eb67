"""What the 16-bit reference pass keeps per scored token, and per-token scoring against it.

Why not full-vocabulary log-probabilities: at a 50k vocabulary they cost 100 kB per token in
fp16 — 29 GB for WikiText-2 (llama.cpp's ``.kld`` file for LLaMA-3 is 37 GiB). kscale keeps,
per scored token, only:

* its NLL (float64, 8 B) — the paired ``dnll`` and Δp need nothing else;
* its argmax (int32, 4 B) — same-top-1;
* for KL, the ``k`` largest log-probabilities (float32) and their token ids (int32): 8·k B.

At the default ``k = 64`` that is 524 B per token: 150 MB for all of WikiText-2 (287k tokens);
``kl_top_k`` trades memory for a tighter KL.

KL from the top-k. With ``K`` the reference's top-k set, ``T16 = 1 − Σ_K p16`` and
``Tq = 1 − Σ_K pq`` the tail masses, kscale reports

    KL_k = Σ_K p16 (log p16 − log pq) + T16 · log(T16 / Tq),

the exact KL between the two distributions coarse-grained to (the k tokens, "the rest"). By the
data-processing inequality ``KL_k <= KL``; it is exact when the two tails are proportional, and
when ``k`` covers the vocabulary. The tail's missing part is
``Σ_tail p16 log(p16/pq) − T16 log(T16/Tq)``; since every tail token has ``p16 <= p16_(k)``
(the k-th largest) and ``log pq >= min_v log pq``, it is at most

    B = T16 · (log p16_(k) − min_v log pq) − T16 · log(T16 / Tq)       (>= 0),

reported per row as ``kl_<data>_tail`` (the mean of ``B``): the exact mean KL lies in
``[kl, kl + kl_tail]``. ``B`` is a worst case (all tail mass on the token q likes least), so it
is loose — on a 130-word toy language at k = 64 it is ~0.013 nats against a KL of ~2e-4 — and
says where raising ``kl_top_k`` could matter, not how much it would change. The stored values are float32, so the 16-bit model scored against its
own reference gets exactly zero (same numbers in, same numbers out): a model's log-probabilities
are computed from its float32 logits and a log-sum-exp (float32 exps and sum, float64 log) and rounded to
float32 exactly where the stored ones were.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: reference log-probabilities kept per scored token for KL (``PerplexitySpec.kl_top_k``)
DEFAULT_TOP_K = 64


def bytes_per_token(top_k: int) -> int:
    """Reference memory per scored token: NLL (8 B) + argmax (4 B) + top-k values and ids (8 B each)."""
    return 12 + 8 * top_k


@dataclass
class TokenReference:
    """The 16-bit model's per-token record for one perplexity spec (index = scored token)."""

    nll: np.ndarray  # float64 [N]
    top1: np.ndarray  # int32 [N]
    topk_logp: np.ndarray | None = None  # float32 [N, k]
    topk_idx: np.ndarray | None = None  # int32 [N, k]

    @classmethod
    def empty(cls, n: int, top_k: int) -> TokenReference:
        with_kl = top_k > 0
        return cls(np.zeros(n, np.float64), np.zeros(n, np.int32),
                   np.zeros((n, top_k), np.float32) if with_kl else None,
                   np.zeros((n, top_k), np.int32) if with_kl else None)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.nll, self.top1, self.topk_logp, self.topk_idx) if a is not None)


@dataclass
class TokenScores:
    """A model's per-token results for one spec (filled window by window)."""

    nll: np.ndarray
    top1: np.ndarray
    kl: np.ndarray | None
    kl_tail: np.ndarray | None

    @classmethod
    def empty(cls, n: int, with_kl: bool) -> TokenScores:
        return cls(np.zeros(n, np.float64), np.zeros(n, np.int32),
                   np.zeros(n, np.float64) if with_kl else None, np.zeros(n, np.float64) if with_kl else None)


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(like: torch.Tensor) -> torch.Tensor:
    """A buffer shaped like ``like`` (one [rows, V] chunk of a window's logits), reused across chunks
    per device: the largest seen is kept, smaller windows take a view of it."""
    key = (like.device.type, like.device.index, like.dtype)
    numel = like.numel()
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < numel:
        _SCRATCH.clear()  # one buffer at a time: a new vocabulary or a longer window replaces it
        buf = _SCRATCH[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(like.shape)


def score_rows(logits, targets, out: TokenScores, at: int, ref: TokenReference | None, *,
               record: bool, top_k: int, top1: bool = True) -> None:
    """Score ``logits[n, V]`` (float32) against ``targets[n]`` into ``out[at : at + n]``.

    ``record``: this is the reference pass; store its top-k (when ``top_k``) into ``ref`` first,
    then score against it like any model (so its paired statistics are exactly zero).
    ``ref`` None: no KL (the spec has ``kl: false`` or no reference exists yet). ``top1``: record
    each token's argmax (for same-top-1, reported with KL); left as zeros otherwise."""
    n = logits.shape[0]
    sl = slice(at, at + n)
    # log-sum-exp: float32 exps of (logit - max) into a reused buffer, their sum, the log in
    # float64 (log q of any token is its logit minus lse). Measured on [83, 50272] rows (2 cores):
    # amax 0.5 ms where max-with-indices takes 5 ms, and a float32 sum 0.55 ms where summing the
    # float32 exps in float64 took 4.5 ms, for an NLL within 1e-7 nats of it (torch's pairwise
    # sum) — below the float32 rounding of the logits themselves (~1e-6 at |logit| ~ 20).
    # Together: 6 ms where this took 20 (cross_entropy alone: 4.9).
    top = logits.amax(-1)
    exps = torch.sub(logits, top[:, None], out=_scratch(logits)).exp_()
    lse = top.double() + torch.log(exps.sum(-1).double())
    out.nll[sl] = (lse - logits.gather(1, targets[:, None])[:, 0].double()).cpu().numpy()
    if top1:  # same-top-1 is a KL statistic: argmax is another 5 ms pass, taken only for it
        out.top1[sl] = logits.argmax(-1).cpu().numpy()
    if record:
        ref.nll[sl] = out.nll[sl]
        ref.top1[sl] = out.top1[sl]
    if ref is None or ref.topk_logp is None or out.kl is None:
        return
    vocab = logits.shape[-1]
    if record:
        vals, idx = logits.topk(min(top_k, vocab), dim=-1)
        vals = (vals.double() - lse[:, None]).float()
        ref.topk_logp[sl, : vals.shape[1]] = vals.cpu().numpy()
        ref.topk_idx[sl, : idx.shape[1]] = idx.cpu().numpy()
    k = min(ref.topk_logp.shape[1], vocab)
    lp16 = torch.as_tensor(ref.topk_logp[sl, :k], device=logits.device).double()
    idx = torch.as_tensor(ref.topk_idx[sl, :k], device=logits.device).long()
    lq = (logits.gather(1, idx).double() - lse[:, None]).float().double()  # rounded as the stored values were
    head = (lp16.exp() * (lp16 - lq)).sum(-1)
    if k >= vocab:  # the top-k is the whole vocabulary: nothing left out
        out.kl[sl] = head.cpu().numpy()
        out.kl_tail[sl] = 0.0
        return
    log_t16 = _log_tail(lp16)
    log_tq = _log_tail(lq)
    t16 = log_t16.exp()
    coarse = torch.where(t16 > 0, t16 * (log_t16 - log_tq), torch.zeros_like(t16))
    out.kl[sl] = (head + coarse).cpu().numpy()
    if record:  # the reference against itself: identical distributions, nothing left out
        out.kl_tail[sl] = 0.0
        return
    min_lq = logits.min(-1).values.double() - lse
    bound = torch.where(t16 > 0, t16 * (lp16[:, -1] - min_lq) - coarse, torch.zeros_like(t16))
    out.kl_tail[sl] = bound.clamp_min(0).cpu().numpy()


def _log_tail(logp):
    """``log(1 − Σ exp(logp))`` per row, stably (``-inf`` when the listed tokens hold all mass)."""
    lse = torch.logsumexp(logp, dim=-1).clamp_max(0.0)
    return torch.log(-torch.expm1(lse))
