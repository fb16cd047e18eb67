"""Zero-shot tasks scored by log-likelihood, as lm-evaluation-harness scores them.

* ``lambada`` (``lambada_openai``): context = passage without its last word, continuation =
  ``" " + last word``; ``acc`` = every continuation token is the greedy argmax, ``ppl`` =
  ``exp(-mean_doc loglik(continuation))`` (lm-eval's ``perplexity`` aggregation, per document).
* ``piqa``: ``"Question: {goal}\\nAnswer:"`` + ``" " + sol``; ``hellaswag``: ``query`` + ``" " + ending``.
  ``acc`` = argmax of the summed log-likelihood; ``acc_norm`` = argmax of log-likelihood divided
  by the choice's length in characters (lm-eval ``process_results`` for multiple choice).
* ``winogrande``: *partial scoring* (Trinh & Le 2018; lm-eval ``winogrande``): the contexts are
  the sentence up to the blank with each option filled in, the continuation is the rest of the
  sentence after the blank; ``acc`` only.

Requests are encoded as lm-eval's ``HFLM._encode_pair`` does: trailing spaces of the context
move to the continuation, the pair is encoded jointly without special tokens and split at the
context's length; an empty context becomes the BOS (else EOS) token.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kscale.data.tasks import load_task_data
from kscale.evaluate.batching import forward_scored
from kscale.evaluate.perplexity import Window
from kscale.registry import Registry


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass(frozen=True)
class TaskItem:
    """One scored item: its requests (one per choice), the gold index and choice texts (for acc_norm)."""

    requests: tuple[Request, ...]
    gold: int
    choices: tuple[str, ...]


@dataclass(frozen=True)
class ZeroShotTask:
    name: str
    version: str
    kind: str  # "lambada" (greedy + ppl) | "choice" (acc, acc_norm) | "partial" (acc)
    build: Callable[[tuple], list[TaskItem]]


TASKS: Registry[ZeroShotTask] = Registry("zero-shot task")


def _lambada(docs) -> list[TaskItem]:
    return [TaskItem((Request(d.context, d.target),), 0, (d.target,)) for d in docs]


def _piqa(docs) -> list[TaskItem]:
    out = []
    for d in docs:
        ctx = f"Question: {d.goal}\nAnswer:"
        out.append(TaskItem(tuple(Request(ctx, " " + s) for s in (d.sol1, d.sol2)), d.label, (d.sol1, d.sol2)))
    return out


def _hellaswag(docs) -> list[TaskItem]:
    return [TaskItem(tuple(Request(d.query, " " + e) for e in d.endings), d.label, d.endings) for d in docs]


def _winogrande(docs) -> list[TaskItem]:
    out = []
    for d in docs:
        blank = d.sentence.index("_")
        continuation = " " + d.sentence[blank + 1 :].strip()
        contexts = tuple(d.sentence[:blank] + opt for opt in (d.option1, d.option2))
        out.append(TaskItem(tuple(Request(c, continuation) for c in contexts), d.answer - 1, contexts))
    return out


TASKS.register("lambada", ZeroShotTask("lambada", "v1", "lambada", _lambada))
TASKS.register("piqa", ZeroShotTask("piqa", "v1", "choice", _piqa))
TASKS.register("hellaswag", ZeroShotTask("hellaswag", "v1", "choice", _hellaswag))
TASKS.register("winogrande", ZeroShotTask("winogrande", "v1", "partial", _winogrande))


def load_task_items(name: str, *, data_dir=None, source: str = "auto", limit: int | None = None) -> list[TaskItem]:
    task = TASKS.get(name)
    items = task.build(load_task_data(name, data_dir=data_dir, source=source))
    return items[:limit] if limit is not None else items


def prefix_token_id(tokenizer) -> int:
    """lm-eval's ``prefix_token_id``: BOS if the tokenizer has one, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token; zero-shot scoring needs one "
                         "to stand for an empty context")
    return int(tid)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval ``HFLM._encode_pair`` (+ the empty-context rule of ``loglikelihood``)."""
    if context == "":
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx) :]


def request_window(context: Sequence[int], continuation: Sequence[int], max_length: int):
    """The scored window of one request: ``(context + continuation)[-(max_length + 1):]`` (left
    truncation, as lm-eval), the model reads all but its last token and the continuation is scored."""
    if not continuation:
        raise ValueError("a zero-shot continuation encoded to no tokens")
    if len(continuation) > max_length:
        raise ValueError(f"a zero-shot continuation of {len(continuation)} tokens does not fit "
                         f"max_length={max_length}")
    full = (list(context) + list(continuation))[-(max_length + 1) :]
    return Window(np.asarray(full, dtype=np.int64), len(continuation))


def loglikelihood(model, encoded: Sequence[tuple[list[int], list[int]]], *, max_length: int,
                  device=None, progress: bool = False, desc: str = "zeroshot", batch_size=1,
                  stats=None) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), all tokens greedy)`` per encoded request, in input order.

    The input is ``(context + continuation)[-(max_length + 1):][:-1]`` (left truncation),
    scored on its last ``len(continuation)`` positions. Requests are scored in length-sorted,
    right-padded batches of ``batch_size`` (an int or ``"auto"``); causal attention makes the
    results independent of the batch up to float rounding (tests: 1e-5, identical greedy flags).
    ``stats`` (a :class:`~kscale.evaluate.batching.ForwardStats`) accumulates the tokens forwarded.
    """
    windows = [request_window(ctx, cont, max_length) for ctx, cont in encoded]
    out: list[tuple[float, bool] | None] = [None] * len(windows)
    for i, logits, target in forward_scored(model, windows, device=device, batch_size=batch_size,
                                            progress=progress, desc=desc, stats=stats):
        logp = torch.log_softmax(logits, dim=-1)
        ll = float(logp.gather(1, target[:, None]).double().sum())
        greedy = bool((logp.argmax(dim=-1) == target).all())
        out[i] = (ll, greedy)
    return out  # type: ignore[return-value]


def acc_stderr(correct: np.ndarray) -> float:
    """lm-eval ``mean_stderr``: sample standard deviation (n-1) / sqrt(n)."""
    n = len(correct)
    if n < 2:
        return float("nan")
    return float(np.std(correct, ddof=1) / math.sqrt(n))


def _item_scores(task: ZeroShotTask, items: Sequence[TaskItem],
                 results: Sequence[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per item: correct (0/1), length-normalized correct (``choice`` tasks, else None), and the
    gold continuation's log-likelihood (``lambada``; else NaN)."""
    if task.kind == "lambada":
        lls = np.array([r[0] for r in results], dtype=np.float64)
        return np.array([float(r[1]) for r in results]), None, lls
    pos, correct, norm = 0, [], []
    for item in items:
        k = len(item.requests)
        lls = np.array([r[0] for r in results[pos : pos + k]])
        pos += k
        correct.append(float(np.argmax(lls) == item.gold))
        if task.kind == "choice":
            lengths = np.array([float(len(c)) for c in item.choices])
            norm.append(float(np.argmax(lls / lengths) == item.gold))
    return np.array(correct), (np.array(norm) if task.kind == "choice" else None), np.full(len(items), np.nan)


def item_correct(task: ZeroShotTask, items: Sequence[TaskItem], results: Sequence[tuple[float, bool]]) -> np.ndarray:
    """Whether each item is answered correctly (0/1): what zero-shot flips are counted on."""
    return _item_scores(task, items, results)[0]


def score_task(task: ZeroShotTask, items: Sequence[TaskItem], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """Metrics for ``task`` from the per-request results (flattened in item/request order); every
    metric with its SE (``<metric>_se``; ``acc_stderr_<task>`` is lm-eval's name for ``acc_<task>_se``)."""
    name = task.name
    correct, norm, lls = _item_scores(task, items, results)
    metrics: dict[str, float] = {}
    if task.kind == "lambada":
        ppl = math.exp(-lls.mean())
        metrics[f"ppl_{name}"] = ppl
        metrics[f"ppl_{name}_se"] = ppl * acc_stderr(lls)  # delta method
    if norm is not None:
        metrics[f"acc_norm_{name}"] = float(np.mean(norm))
        metrics[f"acc_norm_{name}_se"] = acc_stderr(norm)
    metrics[f"acc_{name}"] = float(correct.mean())
    metrics[f"acc_stderr_{name}"] = acc_stderr(correct)
    metrics[f"acc_{name}_se"] = metrics[f"acc_stderr_{name}"]
    metrics[f"n_{name}"] = float(len(items))
    return metrics


def acc_mean(metrics: dict[str, float], tasks: Sequence[str]) -> dict[str, float]:
    """Mean accuracy over tasks, stderr = sqrt(sum se_i^2) / T (independent task estimates)."""
    accs = [metrics[f"acc_{t}"] for t in tasks]
    ses = [metrics[f"acc_stderr_{t}"] for t in tasks]
    se = float(math.sqrt(sum(s * s for s in ses)) / len(ses))
    return {"acc_mean": float(np.mean(accs)), "acc_mean_stderr": se, "acc_mean_se": se}
