"""Fake quantization against bitsandbytes' real Linear4bit (NF4) on a tiny trained model.

The model is a toy rung of width 64 (so every block of 64 stays inside a row, see
kscale.crosscheck) trained for a few hundred steps on the toy language: a trained model has the
peaked weight and logit distributions where a wrong code, block or scale would show.
"""
from __future__ import annotations

import pytest

bnb = pytest.importorskip("bitsandbytes")

OPTS = {"tokens_per_param": 5, "num_threads": 1, "progress": False,
        "ladder": {"L1-d64": {"n_layer": 1, "d_model": 64, "n_head": 2, "batch_size": 16}}}


def test_kernel_equivalence_rules():
    from kscale.crosscheck import kernel_for
    from kscale.quant import QuantSpec

    assert kernel_for("rtn", QuantSpec(bits=4, dtype="nf", blocksize=64)) == ("bnb-nf4", "")
    for method, spec, why in (
        ("rtn", QuantSpec(bits=4, dtype="int", blocksize=64), "NF4 and FP4 only"),
        ("rtn", QuantSpec(bits=3, dtype="nf", blocksize=64), "nf3"),
        ("rtn", QuantSpec(bits=4, dtype="nf", blocksize=None), "blocksize None"),
        ("rtn", QuantSpec(bits=4, dtype="nf", blocksize=64, centered=True), "centered"),
        ("gptq", QuantSpec(bits=4, dtype="nf", blocksize=64), "method gptq"),
    ):
        name, reason = kernel_for(method, spec)
        assert name is None and why in reason and reason.startswith("no kernel equivalent")


@pytest.fixture(scope="module")
def trained():
    from kscale.models import PROVIDERS, ModelSpec, get_family, load_model

    (path,) = PROVIDERS.get("toy").ensure(["L1-d64"], OPTS).values()
    loaded = load_model(ModelSpec(family="toy", size="L1-d64", checkpoint="toy/L1-d64", local_path=str(path)))
    return loaded, get_family("toy")


@pytest.mark.slow
def test_linear4bit_matches_fake_quant_within_1e3_nats(trained, tmp_path):
    import json

    from kscale.crosscheck import crosscheck, write_crosscheck
    from kscale.evaluate import EvalSuite, PerplexitySpec
    from kscale.quant import QuantSpec

    loaded, fam = trained
    suite = EvalSuite([PerplexitySpec(dataset="toy", protocol="gptq", max_tokens=8192, kl=False)],
                      loaded.tokenizer, seqlen_default=fam.seqlen, corpus_options={"toy": OPTS})
    run = lambda m: suite.run(m, progress=False)  # noqa: E731
    base = run(loaded.model)["nll_toy"]
    res = crosscheck(loaded.model, QuantSpec(bits=4, dtype="nf", blocksize=64, scale_bits=32), evaluate=run,
                     module_filter=fam.module_filter)
    assert res.kernel == "bnb-nf4"
    assert abs(res.delta("nll_toy")) < 1e-3
    # quantization is visible (the new toy language's rungs lose ~6e-4 nats at nf4), and the two
    # kernels agree to a small fraction of it, so agreement means something
    assert res.fake["nll_toy"] - base > 1e-4
    assert abs(res.delta("nll_toy")) < 0.05 * (res.fake["nll_toy"] - base)
    assert run(loaded.model)["nll_toy"] == base  # the 16-bit model is restored after both passes
    row = json.loads(write_crosscheck(res, tmp_path / "cc.jsonl").read_text().splitlines()[0])
    assert row["kernel_nll_toy"] == pytest.approx(res.kernel_metrics["nll_toy"]) and "delta_kernel_nll_toy" in row
    # 16-bit constants: still within the tolerance, and the note says why it is not exact
    res16 = crosscheck(loaded.model, QuantSpec(bits=4, dtype="nf", blocksize=64), evaluate=run,
                       module_filter=fam.module_filter)
    assert abs(res16.delta("nll_toy")) < 1e-3 and any("fp32 absmax" in n for n in res16.notes)
    # a cell with no kernel equivalent says so (fake-quant metrics still measured)
    no = crosscheck(loaded.model, QuantSpec(bits=4, dtype="float", blocksize=64), evaluate=run,
                    module_filter=fam.module_filter)
    assert no.kernel is None and no.kernel_metrics is None and "no kernel equivalent" in no.reason
    assert "nll_toy" in no.fake and no.to_row()["kernel_reason"] == no.reason
