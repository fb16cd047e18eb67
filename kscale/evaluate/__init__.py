"""Evaluation: named, versioned perplexity protocols, zero-shot tasks and KL proxies."""
from __future__ import annotations

from kscale.evaluate.batching import BatchSize, ForwardStats, resolve_batch_size
from kscale.evaluate.perplexity import (
    DETOKENIZERS,
    PROTOCOLS,
    PerplexityResult,
    Protocol,
    TokenStream,
    Window,
    forward_scored,
    loglikelihood_rolling,
    tokenize_corpus,
    wikitext_detokenizer,
)
from kscale.evaluate.specs import (
    EvalTaskSpec,
    PerplexitySpec,
    SequentialSpec,
    ZeroShotSpec,
    check_eval_data,
    eval_specs_from_config,
    sequential_from_config,
)
from kscale.evaluate.suite import EvalSuite, max_length_of
from kscale.evaluate.zeroshot import TASKS, Request, TaskItem, encode_pair, loglikelihood, score_task

__all__ = [
    "BatchSize", "ForwardStats", "resolve_batch_size", "loglikelihood_rolling", "check_eval_data", "max_length_of",
    "DETOKENIZERS", "PROTOCOLS", "PerplexityResult", "Protocol", "TokenStream", "Window", "forward_scored",
    "tokenize_corpus", "wikitext_detokenizer", "EvalTaskSpec", "PerplexitySpec", "ZeroShotSpec",
    "eval_specs_from_config", "EvalSuite", "TASKS", "Request", "TaskItem", "encode_pair", "loglikelihood",
    "score_task", "SequentialSpec", "sequential_from_config",
]
