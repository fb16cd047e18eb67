"""Block-by-block execution of a decoder stack, for calibration-based quantization.

GPTQ's ``opt_sequential`` quantizes a model one decoder block at a time: the inputs of the
first block are captured once, each block is run on them to collect its layers' Hessians,
quantized, and run *again* so that the next block sees the outputs of the already-quantized
block (quantization error propagates as at inference). Only one block has to live on the
accelerator at a time, which is how a 175B model quantizes on one GPU.

This module holds the model-agnostic parts: finding the stack of blocks
(:func:`find_decoder_blocks`), capturing the first block's call arguments
(:func:`capture_block_inputs`), running a block on captured arguments (:func:`run_block`),
accumulating each layer's ``H = 2 X Xᵀ`` with forward hooks (:func:`collect_hessians`) and
the driver that strings them together for any Hessian-based quantizer
(:func:`calibrate_blockwise`; GPTQ is one). Nothing here is family-specific: the block call is
replayed with exactly the positional and keyword arguments (attention mask, rotary position
embeddings, ...) the model passed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kscale.quant.modules import quantizable_modules, weight_matrix

log = logging.getLogger(__name__)

__all__ = [
    "BlockCall", "DecoderStack", "HessianAccumulator", "calibrate_blockwise", "capture_block_inputs",
    "collect_hessians", "find_decoder_blocks", "on_device", "run_block", "to_device",
]


@dataclass(frozen=True)
class DecoderStack:
    """The repeated decoder blocks of a model: ``name`` (e.g. ``model.decoder.layers``) and
    the ``nn.ModuleList`` itself; block ``i`` has module-name prefix ``f"{name}.{i}."``."""

    name: str
    blocks: nn.ModuleList

    def prefix(self, i: int) -> str:
        return f"{self.name}.{i}." if self.name else f"{i}."


def find_decoder_blocks(model: nn.Module) -> DecoderStack | None:
    """The ``nn.ModuleList`` holding the most parameters among those whose every element has
    parameters (OPT ``model.decoder.layers``, GPT-2 ``transformer.h``, NeoX
    ``gpt_neox.layers``, Llama ``model.layers``); None if the model has no such list."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        sizes = [sum(p.numel() for p in block.parameters()) for block in module]
        if min(sizes) == 0:
            continue
        if best is None or sum(sizes) > best[0]:
            best = (sum(sizes), name, module)
    return None if best is None else DecoderStack(best[1], best[2])


@dataclass
class BlockCall:
    """One recorded call of a block: positional and keyword arguments; the hidden states are
    ``args[0]`` or ``kwargs["hidden_states"]``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: Tensor) -> BlockCall:
        if self.args:
            return BlockCall((hidden, *self.args[1:]), self.kwargs)
        return BlockCall(self.args, {**self.kwargs, "hidden_states": hidden})


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


def to_device(value: Any, device: torch.device | str | None) -> Any:
    """Move tensors inside (nested tuples/lists/dicts of) ``value`` to ``device``."""
    if device is None:
        return value
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def input_device(model: nn.Module) -> torch.device:
    """Where the model's input ids must go (its input embedding's device)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


def unique_weight_modules(
    model: nn.Module, module_filter: Any, keep_columns: Mapping[str, Tensor] | None,
) -> tuple[dict[str, nn.Module], dict[str, Tensor]]:
    """The selected layers, a weight shared by two modules once, and the validated kept-column
    masks (proxy quantization): what every calibrated method quantizes."""
    modules: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, module in quantizable_modules(model, module_filter).items():
        if id(module.weight) not in seen:  # a weight shared by two modules is quantized once
            seen.add(id(module.weight))
            modules[name] = module
    keep = dict(keep_columns or {})
    unknown = sorted(set(keep) - set(modules))
    if unknown:
        raise ValueError(f"keep_columns names modules that are not quantized: {unknown[:5]}")
    return modules, keep


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, tokens: Tensor, *, device: torch.device | str | None = None
) -> list[BlockCall]:
    """Run ``model`` on each row of ``tokens`` ``[nsamples, seqlen]`` up to ``first_block`` and
    return the block's call arguments, one :class:`BlockCall` per row (moved to ``device``).

    The forward pass is cut at the first block by an exception, so only the embeddings run.
    """
    calls: list[BlockCall] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(BlockCall(to_device(tuple(args), device), to_device(dict(kwargs), device)))
        raise _Captured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    in_device = input_device(model)
    try:
        for row in tokens:
            try:
                model(row[None].to(in_device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    if len(calls) != tokens.shape[0]:
        raise RuntimeError(
            f"captured {len(calls)} calls of the first decoder block for {tokens.shape[0]} samples; "
            "the model does not call its blocks once per forward pass"
        )
    return calls


def _hidden_of(output: Any) -> Tensor:
    """Blocks return the hidden states, or a tuple/ModelOutput whose first item they are."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output.to_tuple()[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(output).__name__}")


@torch.no_grad()
def run_block(block: nn.Module, calls: list[BlockCall]) -> list[BlockCall]:
    """Run ``block`` on every recorded call; return the calls for the next block (same
    keyword arguments, hidden states replaced by this block's outputs)."""
    return [call.with_hidden(_hidden_of(block(*call.args, **call.kwargs))) for call in calls]


@contextmanager
def on_device(module: nn.Module, device: torch.device | str | None) -> Iterator[nn.Module]:
    """Temporarily move ``module`` to ``device`` (no-op for None or its own device)."""
    if device is None:
        yield module
        return
    params = list(module.parameters())
    home = params[0].device if params else torch.device("cpu")
    if torch.device(device) == home:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


# ----------------------------------------------------------------------------- Hessians


class HessianAccumulator:
    """Running ``H = 2 X Xᵀ / n`` over the inputs a layer sees (GPTQ's ``add_batch``).

    ``add(x)`` takes the layer input ``[..., cols]`` (any batch/sequence shape); every
    position counts as one sample. Accumulated in float32 (float64 if asked), as the reference.
    The ``2/n`` normalisation does not change GPTQ's result (damping is relative).
    """

    def __init__(self, cols: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.cols = cols
        self.XXt = torch.zeros(cols, cols, device=device, dtype=dtype)
        self.n = 0

    def add(self, x: Tensor) -> None:
        if x.shape[-1] != self.cols:
            raise ValueError(f"layer input has {x.shape[-1]} features, the Hessian {self.cols}")
        X = x.detach().reshape(-1, self.cols).to(device=self.XXt.device, dtype=self.XXt.dtype)  # [n, cols]
        self.XXt.addmm_(X.T, X)
        self.n += X.shape[0]

    def hessian(self) -> Tensor:
        """``2 X Xᵀ / n`` ``[cols, cols]``; all zeros if nothing was seen."""
        return self.XXt * (2.0 / max(self.n, 1))


def collect_hessians(modules: Mapping[str, nn.Module], run: Callable[[], Any], *, device=None) -> dict[str, Tensor]:
    """Hessians of ``modules`` (name -> Linear/Conv1D) from their inputs during ``run()``.

    Forward hooks read each layer's input (``Linear`` and ``Conv1D`` both take ``[..., in]``).
    """
    accs: dict[str, HessianAccumulator] = {}
    handles = []
    for name, module in modules.items():
        W = weight_matrix(module)
        dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
        acc = accs[name] = HessianAccumulator(W.shape[1], device=device or W.device, dtype=dtype)
        handles.append(module.register_forward_hook(lambda m, inp, out, acc=acc: acc.add(inp[0])))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: acc.hessian() for name, acc in accs.items()}


# ----------------------------------------------------------------------------- the driver


def calibrate_blockwise(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    tokens: Tensor,
    quantize: Callable[[dict[str, Tensor]], None],
    *,
    sequential: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "calibrate",
) -> None:
    """Run a Hessian-based quantizer over ``modules`` (name -> layer) of ``model``, in place.

    ``quantize(hessians)`` receives ``name -> H`` for a group of layers and must quantize
    them in place. Sequential (GPTQ's ``opt_sequential``): capture the first decoder block's
    inputs on ``tokens`` ``[nsamples, seqlen]``; for each block, on ``device``: collect its
    layers' Hessians from the current inputs, quantize them (one group: all layers of the
    block see the same inputs, as the reference), re-run the now quantized block to produce
    the next block's inputs. Selected layers outside the decoder stack (an LM head the filter
    includes) form a last group, calibrated with the quantized blocks in place.
    ``sequential=False`` (or no decoder stack found): one group, all Hessians from the
    unquantized model.
    """
    was_training = model.training
    model.eval()
    done: set[str] = set()
    try:
        stack = find_decoder_blocks(model) if sequential else None
        if stack is not None:
            calls = capture_block_inputs(model, stack.blocks[0], tokens, device=device)
            for i, block in enumerate(tqdm(stack.blocks, desc=desc, unit="block", disable=not progress)):
                names = [n for n in modules if n.startswith(stack.prefix(i))]
                with on_device(block, device):
                    if names:
                        run = lambda: run_block(block, calls)  # noqa: E731
                        quantize(collect_hessians({n: modules[n] for n in names}, run, device=device))
                        done.update(names)
                    calls = run_block(block, calls)
            del calls
        rest = {n: m for n, m in modules.items() if n not in done}
        if rest:
            if stack is not None:
                log.info("%s: %d selected layers outside the decoder blocks, calibrated last", desc, len(rest))
            in_device = input_device(model)

            def run_model() -> None:
                for row in tokens:
                    model(row[None].to(in_device), use_cache=False)

            quantize(collect_hessians(rest, run_model))
    finally:
        model.train(was_training)
