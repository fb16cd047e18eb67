"""GPTQ (Frantar et al., ICLR 2023, arXiv 2210.17323): WikiText-2 perplexity of OPT and BLOOM.

Transcribed from ``/work/shared/REFERENCES.md`` §2.2 (GPTQ Table 3, OPT; Table 4, BLOOM):
weight-only, per-row quantization (no grouping), GPTQ calibrated on 128 random 2048-token C4
windows (``en/c4-train.00000-of-01024``, seed 0); RTN is the same asymmetric min-max quantizer
without GPTQ's updates. Perplexity: the raw WikiText-2 test split joined with ``"\\n\\n"``,
tokenized once with the tokenizer's defaults (OPT prepends ``</s>``), ``n // 2048``
non-overlapping windows, exp of the mean token NLL (REFERENCES.md §2.1) -- kscale's ``gptq``
perplexity protocol. REFERENCES.md does not flag these tables ``[memory]``.
"""
from __future__ import annotations

from kscale.references.core import TABLES, PublishedProtocol, PublishedTable, PublishedValue

SOURCE = ("Frantar, Ashkboos, Hoefler, Alistarh 2023, GPTQ, arXiv 2210.17323, Table 3 (OPT) / "
          "Table 4 (BLOOM), via /work/shared/REFERENCES.md §2.2")
QUANTIZER = ("per output row, asymmetric min-max with an integer zero point, 2^k levels, range "
             "always including 0 (IST-DASLab/gptq quant.py)")
CALIBRATION = {"calib_dataset": "c4", "calib_split": "train", "calib_nsamples": 128, "calib_seqlen": 2048}

# rows: (kscale method, bits, printed values per size in the table's column order)
_OPT_LABELS = ("125M", "350M", "1.3B", "2.7B", "6.7B", "13B", "30B", "66B", "175B")
_OPT_SIZES = ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b", "175b")
_OPT_ROWS = (
    ("none", 16, ("27.65", "22.00", "14.63", "12.47", "10.86", "10.13", "9.56", "9.34", "8.34")),
    ("rtn", 4, ("37.28", "25.94", "48.17", "16.92", "12.10", "11.32", "10.98", "110", "10.54")),
    ("gptq", 4, ("31.12", "24.24", "15.47", "12.87", "11.39", "10.31", "9.63", "9.55", "8.37")),
    ("rtn", 3, ("1.3e3", "64.57", "1.3e4", "1.6e4", "5.8e3", "3.4e3", "1.6e3", "6.1e3", "7.3e3")),
    ("gptq", 3, ("53.85", "33.79", "20.97", "16.88", "14.86", "11.61", "10.27", "14.16", "8.68")),
)
_BLOOM_LABELS = ("560M", "1.1B", "1.7B", "3B", "7.1B", "176B")
_BLOOM_SIZES = ("560m", "1b1", "1b7", "3b", "7b1", "176b")
_BLOOM_ROWS = (
    ("none", 16, ("22.42", "17.69", "15.39", "13.48", "11.37", "8.11")),
    ("rtn", 4, ("25.90", "22.00", "16.97", "14.76", "12.10", "8.37")),
    ("gptq", 4, ("24.03", "19.05", "16.48", "14.20", "11.73", "8.21")),
    ("rtn", 3, ("57.08", "50.19", "63.59", "39.36", "17.38", "571")),
    ("gptq", 3, ("32.31", "25.08", "21.11", "17.40", "13.47", "8.64")),
)


def _values(family, sizes, labels, rows):
    return tuple(PublishedValue(family, size, method, bits, float(printed), printed, label)
                 for method, bits, printed_row in rows
                 for size, label, printed in zip(sizes, labels, printed_row, strict=True))


TABLES.register("gptq-opt-wikitext2", PublishedTable(
    name="gptq-opt-wikitext2",
    title="GPTQ Table 3: OPT WikiText-2 perplexity, FP16 / RTN / GPTQ at 4 and 3 bits (per row)",
    source=SOURCE,
    metric="ppl",
    protocol=PublishedProtocol(dataset="wikitext2", protocol="gptq", split="test", seqlen=2048,
                               bos={"opt": "</s>"}, blocksize=None, calibration=CALIBRATION,
                               quantizer=QUANTIZER),
    values=_values("opt", _OPT_SIZES, _OPT_LABELS, _OPT_ROWS),
    notes="175B is not on the hub as facebook/opt-175b (request access); values like 1.3e3 are "
          "printed with two significant digits.",
))
TABLES.register("gptq-bloom-wikitext2", PublishedTable(
    name="gptq-bloom-wikitext2",
    title="GPTQ Table 4: BLOOM WikiText-2 perplexity, FP16 / RTN / GPTQ at 4 and 3 bits (per row)",
    source=SOURCE,
    metric="ppl",
    protocol=PublishedProtocol(dataset="wikitext2", protocol="gptq", split="test", seqlen=2048,
                               bos={"bloom": None}, blocksize=None, calibration=CALIBRATION,
                               quantizer=QUANTIZER),
    values=_values("bloom", _BLOOM_SIZES, _BLOOM_LABELS, _BLOOM_ROWS),
    notes="GPTQ's bloom.py evaluates BLOOM at seqlen 2048 (ALiBi, no position limit).",
))
