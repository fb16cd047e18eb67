"""What a sweep will cost before it runs: jobs, cells, tokens, FLOPs, GPU-hours, memory, disk.

``python run_sweep.py <any sweep> plan=true`` builds the same validated :class:`SweepPlan` s a
real launch would, then calls :func:`estimate_plans` instead of launching: no weights are
loaded and nothing is written (``plan_out=PATH`` writes the JSON the table shows). The numbers
come from three places, each named in the output so a reader knows how far to trust them:

* **cells**: the job's grid (``plan.cells``) against the study's finished keys (resume-aware:
  exactly the keys ``run_job`` would skip), so "to run" is what a launch would do.
* **tokens per cell**: the evaluation's own windowing code applied to the local data
  (``kscale.evaluate.perplexity``: windows of the protocol, tokens the model reads =
  ``len(window) - 1`` each) and every zero-shot request (context + continuation, left-truncated
  at the model context, as ``loglikelihood`` feeds them), tokenized with the family's tokenizer
  when one is available offline (the checkpoint folder, the shared tokenizer files, the toy
  language); otherwise GPT-2's BPE stands in and the count is marked approximate.
* **FLOPs**: forward FLOPs ~= 2 * n_params * tokens read (Kaplan et al. 2020, eq. 2.2: a
  multiply-add per parameter per token), except that the LM head is charged only at scored
  positions where its size is known from a local/provider architecture (the evaluation computes
  logits only there; zero-shot contexts are read, not scored). It leaves out the attention-score
  products (~4 * n_layer * seqlen * d_model per token: ~30 % on top for OPT-125m at 2048 tokens,
  ~3 % for OPT-175B) and padding, so small models are underestimated; the totals are dominated
  by the large ones. A sweep job runs the 16-bit reference pass once (it is also the baseline
  cell's evaluation) and one evaluation per quantized cell; calibrated methods add passes over
  their calibration tokens (``QuantMethod.calibration_passes``). ``n_params`` comes from a local
  ``config.json`` counted on the meta device when the checkpoint is local, else from the
  family's ``model.n_params`` table (published configs, so no download).

Hours = FLOPs / the device profile's sustained rate (:data:`DEVICES`, overridable with
``plan_devices`` in config), or the rate measured by timing one window of the smallest model on
this machine (``plan_probe=true``, the only option that loads weights).

Submodules, in dependency order: ``devices``, ``sizes`` (parameters, FLOPs), ``tokens``, ``jobs``.
"""
from __future__ import annotations

from kscale.estimate.devices import DEVICES, GIB, DeviceProfile, device_profile, local_device_name
from kscale.estimate.sizes import (PLAN_PARAM_COUNTERS, calibration_tokens, forward_flops, head_params_for,
                                   n_params_for, vocab_size_for, weight_bytes_per_param)
from kscale.estimate.tokens import PLAN_TOKENIZERS, EvalTokens, eval_tokens, plan_tokenizer
from kscale.estimate.jobs import (ROW_BYTES_BASE, ROW_BYTES_PER_EVAL, SEQUENTIAL_STOP_FRACTION, JobEstimate,
                                  PlanEstimate, estimate_job, estimate_plans, plan_settings, probe_rate, report_plan, write_plan)

__all__ = [
    "DEVICES", "GIB", "PLAN_PARAM_COUNTERS", "PLAN_TOKENIZERS", "ROW_BYTES_BASE", "ROW_BYTES_PER_EVAL",
    "SEQUENTIAL_STOP_FRACTION", "DeviceProfile", "EvalTokens", "JobEstimate", "PlanEstimate", "calibration_tokens", "device_profile",
    "estimate_job", "estimate_plans", "eval_tokens", "forward_flops", "head_params_for", "local_device_name",
    "n_params_for", "plan_settings", "plan_tokenizer", "probe_rate", "report_plan", "vocab_size_for",
    "weight_bytes_per_param", "write_plan",
]
