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

from kscale.data.tasks import load_task_data
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


def loglikelihood(model, encoded: Sequence[tuple[list[int], list[int]]], *, max_length: int,
                  device=None, progress: bool = False, desc: str = "zeroshot") -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), all tokens greedy)`` per encoded request.

    The input is ``(context + continuation)[-(max_length + 1):][:-1]`` (left truncation),
    scored on its last ``len(continuation)`` positions; one request per forward pass, so
    results do not depend on batch size or padding (REFERENCES.md, user asks 4).
    """
    import torch
    from tqdm.auto import tqdm

    from kscale.evaluate.perplexity import model_device

    device = device or model_device(model)
    out = []
    with torch.inference_mode():
        for ctx, cont in tqdm(encoded, desc=desc, disable=not progress, leave=False):
            if not cont:
                raise ValueError("a zero-shot continuation encoded to no tokens")
            full = (list(ctx) + list(cont))[-(max_length + 1) :]
            x = torch.tensor([full[:-1]], dtype=torch.long, device=device)
            logits = model(input_ids=x, use_cache=False).logits[0, -len(cont) :, :].float()
            logp = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(cont, dtype=torch.long, device=logits.device)
            ll = float(logp.gather(1, target[:, None]).sum())
            greedy = bool((logp.argmax(dim=-1) == target).all())
            out.append((ll, greedy))
    return out


def acc_stderr(correct: np.ndarray) -> float:
    """lm-eval ``mean_stderr``: sample standard deviation (n-1) / sqrt(n)."""
    n = len(correct)
    if n < 2:
        return float("nan")
    return float(np.std(correct, ddof=1) / math.sqrt(n))


def score_task(task: ZeroShotTask, items: Sequence[TaskItem], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """Metrics for ``task`` from the per-request results (flattened in item/request order)."""
    name = task.name
    metrics: dict[str, float] = {}
    if task.kind == "lambada":
        lls = np.array([r[0] for r in results])
        correct = np.array([float(r[1]) for r in results])
        metrics[f"ppl_{name}"] = math.exp(-lls.mean())
    else:
        pos = 0
        correct_l, norm_l = [], []
        for item in items:
            k = len(item.requests)
            lls = np.array([r[0] for r in results[pos : pos + k]])
            pos += k
            correct_l.append(float(np.argmax(lls) == item.gold))
            if task.kind == "choice":
                lengths = np.array([float(len(c)) for c in item.choices])
                norm_l.append(float(np.argmax(lls / lengths) == item.gold))
        correct = np.array(correct_l)
        if task.kind == "choice":
            metrics[f"acc_norm_{name}"] = float(np.mean(norm_l))
    metrics[f"acc_{name}"] = float(correct.mean())
    metrics[f"acc_stderr_{name}"] = acc_stderr(correct)
    metrics[f"n_{name}"] = float(len(items))
    return metrics


def acc_mean(metrics: dict[str, float], tasks: Sequence[str]) -> dict[str, float]:
    """Mean accuracy over tasks, stderr = sqrt(sum se_i^2) / T (independent task estimates)."""
    accs = [metrics[f"acc_{t}"] for t in tasks]
    ses = [metrics[f"acc_stderr_{t}"] for t in tasks]
    return {"acc_mean": float(np.mean(accs)),
            "acc_mean_stderr": float(math.sqrt(sum(s * s for s in ses)) / len(ses))}
