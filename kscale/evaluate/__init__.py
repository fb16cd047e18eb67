"""Evaluation: named, versioned perplexity protocols, zero-shot tasks and KL proxies."""
from __future__ import annotations

from kscale.evaluate.perplexity import (
    DETOKENIZERS,
    PROTOCOLS,
    PerplexityResult,
    Protocol,
    TokenStream,
    Window,
    forward_scored,
    tokenize_corpus,
    wikitext_detokenizer,
)
from kscale.evaluate.specs import EvalTaskSpec, PerplexitySpec, ZeroShotSpec, eval_specs_from_config
from kscale.evaluate.suite import EvalSuite
from kscale.evaluate.zeroshot import TASKS, Request, TaskItem, encode_pair, loglikelihood, score_task

__all__ = [
    "DETOKENIZERS", "PROTOCOLS", "PerplexityResult", "Protocol", "TokenStream", "Window", "forward_scored",
    "tokenize_corpus", "wikitext_detokenizer", "EvalTaskSpec", "PerplexitySpec", "ZeroShotSpec",
    "eval_specs_from_config", "EvalSuite", "TASKS", "Request", "TaskItem", "encode_pair", "loglikelihood",
    "score_task",
]
