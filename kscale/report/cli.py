"""``python -m kscale.report <study_dir>``: the command line of the report."""
from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from kscale.fit import DEFAULT_THRESHOLD
from kscale.registry import UnknownNameError
from kscale.report.inputs import AUTO_LAW, ReportError, check_law, check_metric, load_study, loss_laws
from kscale.report.write import write_report

DESCRIPTION = "Regenerate a study's figures and summary.md from its results table."


def _references():
    try:
        from kscale.references import compare
    except ImportError as e:
        raise ReportError(f"--compare needs kscale.references.compare, which could not be imported ({e})") from None
    return compare


def compare_with(df: pd.DataFrame, name: str) -> str:
    """Markdown comparison of the study with the published table ``name``.

    Raises:
        ReportError: the references module is missing or ``name`` is not a published table.
    """
    ref = _references()
    try:
        table = ref.compare_study(df, name)
    except UnknownNameError as e:
        raise ReportError(str(e)) from None
    return ref.format_comparison(table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kscale.report", description=DESCRIPTION)
    p.add_argument("study_dir", help="study folder written by run_sweep.py (results/<name>, with rows/*.jsonl)")
    p.add_argument("--metric", default=None,
                   help="metric column to analyse, e.g. nll_wikitext2, dnll_wikitext2, kl_wikitext2 or acc_mean "
                        "(default: each family's first nll_* column)")
    p.add_argument("--law", default=AUTO_LAW,
                   help=f"scaling law to fit: one of {', '.join(loss_laws())}, or '{AUTO_LAW}' for the one that best "
                        "predicts the held-out largest size (default: %(default)s)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none; default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--known-E", type=float, default=None,
                   help="true irreducible loss to print next to the fitted E (default: the rows' entropy_rate)")
    p.add_argument("--n-holdout", type=int, default=1,
                   help="largest sizes held out to compare laws and check extrapolation (0: skip; default: %(default)s)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="degradation in nats whose training-token count is reported per size, when the study "
                        "varies training tokens (default: %(default)s)")
    p.add_argument("--out", default=None, help="write summary.md, best_per_budget.csv and figures/ here instead of the study folder")
    p.add_argument("--compare", metavar="NAME", default=None,
                   help="also compare with the published table NAME (kscale.references) and write compare-NAME.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Everything that can be refused is checked before anything is written.
        check_law(args.law)
        df = load_study(args.study_dir)
        if args.metric:
            check_metric(df, args.metric)
        comparison = compare_with(df, args.compare) if args.compare else None
        rep = write_report(args.study_dir, df=df, metric=args.metric, law=args.law, n_bootstrap=args.n_bootstrap,
                           seed=args.seed, known_E=args.known_E, n_holdout=args.n_holdout, out_dir=args.out,
                           threshold=args.threshold)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.answer)
    print(f"summary: {rep.summary_path}")
    print(f"table:   {rep.table_path}")
    print(f"figures: {len(rep.figure_paths)} files under {rep.summary_path.parent / 'figures'}")
    if comparison is not None:
        path = rep.summary_path.parent / f"compare-{args.compare}.md"
        path.write_text(comparison)
        print(comparison)
        print(f"comparison: {path}")
    return 0
