"""A compact, deterministic trainer for the toy ladder (standard ``transformers`` architectures).

Chinchilla-style recipe, kept small: AdamW, linear warm-up then cosine decay to
``min_lr_ratio * lr``, one pass over fresh data (never repeats a synthetic token), and a token
budget ``tokens_per_param * n_params`` per model, where ``n_params = sum(p.numel())`` of the
model as loaded (tied embeddings counted once). Deterministic given the seed: the weights come
from ``torch.manual_seed(seed)`` and the batches from a seeded data stream read in order.

Contents: :class:`ToyShape` (one rung of the ladder), :data:`ARCHITECTURES` (name -> config
builder), :class:`TrainSpec`, :func:`build_model`, :func:`train_steps`, :func:`train_model`.

Snapshots: ``train_model(..., snapshots={step: save})`` calls ``save(model)`` after optimizer step
``step`` of the *same* run (checkpoints over training, issue 11). Saving reads the weights and
touches no random state, so the final weights are bit-identical with or without snapshots.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kscale.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyShape:
    """Shape of one toy model: layers, width, heads, and its batch size (sequences per step).

    Bigger models get bigger batches, as in real ladders: a tiny model's token budget is
    small, and a small batch gives it enough optimizer steps to converge.
    """

    n_layer: int
    d_model: int
    n_head: int
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model must be divisible by n_head; got {self.d_model} / {self.n_head}")
        if min(self.n_layer, self.d_model, self.n_head, self.batch_size) < 1:
            raise ValueError(f"all shape fields must be >= 1; got {self}")


# name -> builder(shape, vocab_size, seqlen, eos_id) -> transformers.PretrainedConfig
ARCHITECTURES: Registry[Callable] = Registry("toy architecture")


@ARCHITECTURES.register("gpt2")
def _gpt2(shape: ToyShape, vocab_size: int, seqlen: int, eos_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=seqlen, n_embd=shape.d_model, n_layer=shape.n_layer,
        n_head=shape.n_head, n_inner=4 * shape.d_model, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        tie_word_embeddings=True,
    )


@ARCHITECTURES.register("opt")
def _opt(shape: ToyShape, vocab_size: int, seqlen: int, eos_id: int):
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab_size, hidden_size=shape.d_model, num_hidden_layers=shape.n_layer,
        ffn_dim=4 * shape.d_model, num_attention_heads=shape.n_head,
        max_position_embeddings=seqlen, word_embed_proj_dim=shape.d_model, dropout=0.0,
        attention_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
        tie_word_embeddings=True,
    )


@ARCHITECTURES.register("llama")
def _llama(shape: ToyShape, vocab_size: int, seqlen: int, eos_id: int):
    from transformers import LlamaConfig

    ffn = 8 * ((8 * shape.d_model // 3 + 7) // 8)  # SwiGLU width ~ 8/3 d, a multiple of 8
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.d_model, intermediate_size=ffn,
        num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
        num_key_value_heads=shape.n_head, max_position_embeddings=seqlen,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True,
    )


@dataclass(frozen=True)
class TrainSpec:
    """Training recipe shared by every size of the ladder.

    Attributes:
        tokens_per_param: token budget per parameter (Chinchilla's compute-optimal ratio is ~20).
        seqlen: training context = the model's position table = the family's eval ``seqlen``.
        lr: peak learning rate at ``d_model = lr_ref_width``; scaled by ``lr_ref_width / d_model``
            (wider models need smaller steps, muP-style) and capped at ``lr``.
        lr_ref_width: width at which ``lr`` applies.
        warmup_frac: fraction of steps of linear warm-up.
        min_lr_ratio: final learning rate / peak learning rate of the cosine schedule.
        weight_decay, beta1, beta2, grad_clip: AdamW and clipping settings.
        min_steps: floor on optimizer steps, so the smallest model's schedule is not degenerate.
    """

    tokens_per_param: float = 20.0
    seqlen: int = 64
    lr: float = 1e-2
    lr_ref_width: int = 16
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    min_steps: int = 50

    def __post_init__(self) -> None:
        # canonical types, so `tokens_per_param: 20` from YAML and 20.0 hash to the same cache key
        for name in ("tokens_per_param", "lr", "warmup_frac", "min_lr_ratio", "weight_decay", "beta1",
                     "beta2", "grad_clip"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("seqlen", "lr_ref_width", "min_steps"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.tokens_per_param <= 0 or self.seqlen < 2 or self.lr <= 0:
            raise ValueError(
                "tokens_per_param and lr must be > 0 and seqlen >= 2; got "
                f"tokens_per_param={self.tokens_per_param}, lr={self.lr}, seqlen={self.seqlen}"
            )
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"warmup_frac must be in [0, 1) and min_lr_ratio in [0, 1]; got "
                f"{self.warmup_frac}, {self.min_lr_ratio}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def peak_lr(self, d_model: int) -> float:
        return min(self.lr, self.lr * self.lr_ref_width / d_model)


def build_model(architecture: str, shape: ToyShape, vocab_size: int, seqlen: int, eos_id: int, seed: int):
    """A freshly initialised ``AutoModelForCausalLM`` (float32), seeded for determinism."""
    from transformers import AutoModelForCausalLM

    config = ARCHITECTURES.get(architecture)(shape, vocab_size, seqlen, eos_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def n_params(model: torch.nn.Module) -> int:
    """``sum(p.numel())`` over ``model.parameters()`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def train_steps(spec: TrainSpec, n: int, batch_size: int) -> int:
    """Optimizer steps of a model with ``n`` parameters: its token budget over tokens per step,
    at least ``spec.min_steps`` (so tiny models still get a real schedule)."""
    return max(spec.min_steps, math.ceil(spec.tokens_per_param * n / (batch_size * spec.seqlen)))


def lr_at(step: int, total: int, peak: float, spec: TrainSpec) -> float:
    """Linear warm-up over ``warmup_frac * total`` steps, then cosine to ``min_lr_ratio * peak``."""
    warm = max(1, int(spec.warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports (also written to ``train_stats.json`` in the checkpoint)."""

    n_params: int
    n_tokens: int
    steps: int
    final_loss: float  # mean training loss over the last 10% of steps (nats/token)
    train_s: float
    losses: tuple[float, ...]
    snapshot_s: float = 0.0  # time spent saving snapshots (not in train_s)


#: Models smaller than this train on one CPU thread when ``num_threads`` is None (see train_model).
SINGLE_THREAD_BELOW = 30_000

# batches(n_steps, batch_size, seqlen) -> iterator of [batch_size, seqlen] int64 arrays, in order
BatchSource = Callable[[int, int, int], Iterator[np.ndarray]]


def train_model(
    model: torch.nn.Module,
    batches: BatchSource,
    spec: TrainSpec,
    *,
    batch_size: int,
    d_model: int,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "train",
    num_threads: int | None = None,
    snapshots: Mapping[int, Callable[[torch.nn.Module], None]] | None = None,
    step_context: Callable[[torch.nn.Module, int, int], contextlib.AbstractContextManager] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``tokens_per_param * n_params`` tokens; returns the statistics.

    ``snapshots`` maps a number of completed optimizer steps (1..steps) to a function called with
    the model at that point (the caller saves it); the time spent in them is not in ``train_s``.

    ``num_threads`` sets torch's intra-op CPU threads for the duration of training (restored
    afterwards). ``None`` = automatic: 1 thread below :data:`SINGLE_THREAD_BELOW` parameters,
    torch's default above. Measured on 2 cores: extra threads buy nothing for the small rungs,
    1.3-1.5x for the two largest (L4-d48: 148 -> 100 ms/step), but on an *oversubscribed*
    machine OpenMP threads that spin-wait for each other made steps up to ~10x slower; pass
    ``num_threads=1`` when sharing the machine with other CPU-heavy jobs.

    ``step_context(model, step, steps)`` returns the context each optimizer step's forward and
    backward run in (quantized training, :meth:`kscale.toy.lowbit.TrainPrecision.forward`);
    None = plain full-precision steps.
    """
    old_threads = torch.get_num_threads()
    if num_threads is None:
        num_threads = 1 if n_params(model) < SINGLE_THREAD_BELOW else old_threads
    if str(device).startswith("cpu"):
        torch.set_num_threads(num_threads)
    try:
        return _train(model, batches, spec, batch_size=batch_size, d_model=d_model, device=device,
                      progress=progress, desc=desc, snapshots=dict(snapshots or {}), step_context=step_context)
    finally:
        torch.set_num_threads(old_threads)


def _train(model, batches, spec, *, batch_size, d_model, device, progress, desc, snapshots,
           step_context=None) -> TrainResult:
    from tqdm.auto import tqdm

    n = n_params(model)
    tokens_per_step = batch_size * spec.seqlen
    steps = train_steps(spec, n, batch_size)
    bad = sorted(k for k in snapshots if not 1 <= k <= steps)
    if bad:
        raise ValueError(f"snapshot steps must be in 1..{steps} (the run's optimizer steps); got {bad}")
    snapshot_s = 0.0
    peak = spec.peak_lr(d_model)
    model.to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak, betas=(spec.beta1, spec.beta2),
    )
    log.info("training %s: %d params, %d steps x %d tokens, peak lr %.2e", desc, n, steps, tokens_per_step, peak)
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for step, batch in enumerate(batches(steps, batch_size, spec.seqlen)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak, spec)
        ids = torch.from_numpy(batch).to(device)
        with step_context(model, step, steps) if step_context else contextlib.nullcontext():
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step + 1 in snapshots:
            t0 = time.perf_counter()
            snapshots[step + 1](model)
            snapshot_s += time.perf_counter() - t0
        if step % 25 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.update()
    bar.close()
    train_s = time.perf_counter() - start - snapshot_s
    if len(losses) != steps:
        raise RuntimeError(f"batch source yielded {len(losses)} batches, expected {steps}")
    tail = losses[-max(1, steps // 10):]
    final = float(np.mean(tail))
    log.info("trained %s in %.1fs: final loss %.4f nats/token", desc, train_s, final)
    model.eval()
    return TrainResult(n, steps * tokens_per_step, steps, final, train_s, tuple(losses), snapshot_s)
