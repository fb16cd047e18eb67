"""The committed notebooks run top to bottom on the committed study (issue 5, "Notebooks").

Each notebook is read into memory and executed there with nbclient, in ``notebooks/`` as working
directory (as Jupyter would); the files on disk are never rewritten. Cells that the assertions look
at carry a ``tags`` entry in their metadata (``figure-1``, ``fitted-E`` ...), so editing the
notebooks' prose does not break the test.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NB_DIR = ROOT / "notebooks"
STUDY = ROOT / "results" / "toy-study"
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Make sure the ``python3`` kernel is *this* interpreter (the venv that has kscale).

    jupyter_client maps a spec whose argv starts with plain ``python``/``python3`` to
    ``sys.executable``; any other interpreter (e.g. a user-wide kernelspec shadowing the venv's)
    is replaced by a kernelspec installed into a temporary prefix that JUPYTER_PATH puts first.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def resolves_here() -> bool:
        try:
            argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
        except NoSuchKernel:
            return False
        major, minor = sys.version_info[:2]
        if argv0 in {"python", f"python{major}", f"python{major}.{minor}"}:
            return True
        return Path(argv0).resolve() == Path(sys.executable).resolve()

    old = os.environ.get("JUPYTER_PATH")
    if not resolves_here():
        from ipykernel.kernelspec import install

        prefix = tmp_path_factory.mktemp("kernelspec")
        install(kernel_name=KERNEL, prefix=str(prefix))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(prefix / "share" / "jupyter")] + ([old] if old else []))
        assert resolves_here(), "could not point the python3 kernelspec at this interpreter"
    yield
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def _execute(name: str, monkeypatch):
    # The committed study, not whatever the caller's environment points at.
    monkeypatch.delenv("KSCALE_STUDY", raising=False)
    monkeypatch.delenv("KSCALE_METRIC", raising=False)
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _tagged(nb, tag: str):
    cells = [c for c in _code_cells(nb) if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one code cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _n_images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def _assert_clean_run(nb):
    for cell in _code_cells(nb):
        assert cell.execution_count is not None, f"cell not executed:\n{cell.source[:200]}"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell errored: {errors[0].ename}: {errors[0].evalue}\n{cell.source[:200]}"
        stderr = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr")
        assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_sweep_overview_notebook(kernel_env, monkeypatch):
    assert (STUDY / "rows").is_dir(), f"the committed study is missing: {STUDY}"
    nb = _execute("01-sweep-overview.ipynb", monkeypatch)
    _assert_clean_run(nb)
    assert "toy-study" in _text(_tagged(nb, "setup"))
    overview = _text(_tagged(nb, "overview-table"))
    import pandas as pd
    largest = pd.read_parquet(STUDY / "table.parquet").sort_values("n_params")["size"].iloc[-1]
    assert "n_params" in overview and largest in overview
    assert "dtype = `nf`" in "".join(o.data.get("text/markdown", "") for o in _tagged(nb, "pivot").outputs
                                     if o.output_type == "display_data")
    assert "above H" in _text(_tagged(nb, "baseline-entropy"))
    assert _n_images(_tagged(nb, "figure-1")) == 1
    assert "frontier points per k" in _text(_tagged(nb, "frontier"))
    assert _n_images(_tagged(nb, "dtype-figures")) == 2


@pytest.mark.slow
def test_scaling_law_fits_notebook(kernel_env, monkeypatch):
    nb = _execute("02-scaling-law-fits.ipynb", monkeypatch)
    _assert_clean_run(nb)
    fits = _text(_tagged(nb, "fits"))
    assert "offset" in fits and "power" in fits
    m = re.search(r"fitted E \(offset\) = ([0-9.eE+-]+)", _text(_tagged(nb, "fitted-E")))
    assert m, "the fitted-E cell did not print the fitted E"
    assert 0.0 <= float(m.group(1)) < 10.0
    assert _n_images(_tagged(nb, "fit-figures")) == 2
    assert _n_images(_tagged(nb, "residual-figures")) == 2
    assert "runner_up_config" in _text(_tagged(nb, "best-per-budget"))
    decisions = _text(_tagged(nb, "decisions"))
    assert "p_bits_3" in decisions and _n_images(_tagged(nb, "decisions")) == 1
    ext = _tagged(nb, "extrapolation")
    assert re.search(r"mean \|relative error\| = [0-9.]+%", _text(ext))
    assert _n_images(ext) == 1


TOKENS_STUDY = ROOT / "results" / "toy-tokens"


@pytest.mark.slow
def test_training_tokens_notebook(kernel_env, monkeypatch):
    assert (TOKENS_STUDY / "rows").is_dir(), f"the committed study is missing: {TOKENS_STUDY}"
    nb = _execute("03-training-tokens.ipynb", monkeypatch)
    _assert_clean_run(nb)
    assert "toy-tokens" in _text(_tagged(nb, "setup"))
    assert "checkpoints per size: [6]" in _text(_tagged(nb, "checkpoints"))
    assert _n_images(_tagged(nb, "degradation-figure")) == 1
    assert _n_images(_tagged(nb, "fit-figures")) == 2
    # the toy study shows it: low-bit degradation grows with training tokens at fixed size
    assert re.search(r"qid: degradation grows with training tokens", _text(_tagged(nb, "trend")))
    assert _n_images(_tagged(nb, "threshold")) == 1 and "ΔL = 0.05 nats" in _text(_tagged(nb, "threshold"))


FORMATS_STUDY = ROOT / "results" / "toy-formats"


@pytest.mark.slow
def test_formats_notebook(kernel_env, monkeypatch):
    assert (FORMATS_STUDY / "rows").is_dir(), f"the committed study is missing: {FORMATS_STUDY}"
    nb = _execute("04-formats.ipynb", monkeypatch)
    _assert_clean_run(nb)
    assert "study: toy-formats" in _text(_tagged(nb, "setup"))
    # the toy rungs' rows of 16/24/48 values: GGUF and MX types store those matrices in F16
    stored = _text(_tagged(nb, "stored"))
    assert "152 cells ok, 0 not storable" in stored
    assert "12.1667" in stored  # q4_0 on L2-d16: two thirds of the weights in F16 (2/3 x 16 + 1/3 x 4.5)
    assert "12.0833" in stored  # mxfp4 on L2-d16: the same two thirds in F16 (2/3 x 16 + 1/3 x 4.25)
    assert "0.6667" in stored  # their F16 share, from the rows' stored_types census
    assert "alpha = " in _text(_tagged(nb, "offsets")) and "known" in _text(_tagged(nb, "offsets"))
    assert "P(best)" in _text(_tagged(nb, "ranking"))
    assert _n_images(_tagged(nb, "figure")) == 1


PRECISION_STUDY = ROOT / "results" / "toy-precision"


@pytest.mark.slow
def test_precision_notebook(kernel_env, monkeypatch):
    import numpy as np
    import pandas as pd

    from kscale.fit import fit_law

    assert (PRECISION_STUDY / "rows").is_dir(), f"the committed study is missing: {PRECISION_STUDY}"
    nb = _execute("05-precision.ipynb", monkeypatch)
    _assert_clean_run(nb)
    assert "study: toy-precision" in _text(_tagged(nb, "setup"))
    # recomputed by hand from the committed table (no kscale helper): weights-only ok cells, every checkpoint
    t = pd.read_csv(PRECISION_STUDY / "table.csv")
    t = t[t["status"].eq("ok") & t["act_bits"].fillna(16).ge(16) & t["kv_bits"].fillna(16).ge(16)].copy()
    for c in ("train_bits_w", "train_bits_a", "train_bits_kv", "bits"):
        t[c] = t[c].fillna(16).astype(int)
    close = lambda printed, value: np.isclose(float(printed), value, rtol=1e-3, atol=1e-9)  # 4 printed digits

    def model_losses(w):  # nll per (size, checkpoint) x post-training bits, weights trained at w, a = kv = 16
        m = t[t["train_bits_w"].eq(w) & t["train_bits_a"].eq(16) & t["train_bits_kv"].eq(16)]
        return m.pivot_table(index=["size", "revision"], columns="bits", values="nll_toy")

    full = model_losses(16)
    w3 = model_losses(3)
    pre = _text(_tagged(nb, "pretraining"))
    m = re.search(r"w3: mean increase ([+-][0-9.]+) nats over (\d+) ", pre)
    assert m and int(m.group(2)) == len(w3)
    assert abs(float(m.group(1)) - (w3[16] - full[16]).mean()) < 1e-4
    assert _n_images(_tagged(nb, "pretraining")) == 1

    rob = _text(_tagged(nb, "robustification"))
    for k in (3, 4, 6):
        low = model_losses(k)
        d_low, d_full = (low[k] - low[16]), (full[k] - full[16])[low.index]
        diff = d_low - d_full
        m = re.search(rf"k={k}: (\d+) pairs; δ_PTQ trained at k = (\S+), trained at 16 = (\S+); "
                      rf"difference = (\S+) ± (\S+) ", rob)
        assert m, f"no robustification line for k={k}:\n{rob}"
        assert int(m.group(1)) == len(diff) == 6
        assert close(m.group(2), d_low.mean()) and close(m.group(3), d_full.mean())
        assert close(m.group(4), diff.mean()) and close(m.group(5), diff.std(ddof=1) / np.sqrt(len(diff)))
    assert _n_images(_tagged(nb, "robustification")) == 1

    # the law refitted here on the same cells: the notebook prints its γ's, and w is the largest
    fit = fit_law(t, "precision", y="nll_toy")
    gam = _text(_tagged(nb, "gammas"))
    printed = {}
    for g in ("gamma_w", "gamma_a", "gamma_kv"):
        m = re.search(rf"^{g} = ([0-9.eE+-]+) \(95% interval \[([0-9.eE+-]+), ([0-9.eE+-]+)\]\)", gam, re.M)
        assert m, f"no {g} line:\n{gam}"
        printed[g] = float(m.group(1))
        assert abs(printed[g] - fit.params[g]) <= 2e-3 * fit.params[g], (g, printed[g], fit.params[g])
        assert float(m.group(2)) <= printed[g] <= float(m.group(3))
    most = max(printed, key=printed.get).removeprefix("gamma_")
    assert re.search(rf"most sensitive part: {most} \(", gam)

    # P* = argmax of Π(1 − e^(−P/γ))/P, recomputed from the printed γ's; inside its printed interval
    opt = _text(_tagged(nb, "optimal-bits"))
    m = re.search(r"P\* = ([0-9.]+) bits \(95% bootstrap interval \[([0-9.]+), ([0-9.]+)\]", opt)
    assert m, opt
    p_star, lo, hi = map(float, m.groups())
    grid = np.linspace(1, 16, 15001)
    capacity = np.prod([-np.expm1(-grid / g) for g in printed.values()], axis=0) / grid
    assert abs(p_star - grid[capacity.argmax()]) <= 0.02
    assert lo <= p_star <= hi
    inside = hi >= 7 and lo <= 8
    assert f"paper's 7-8 bits: {'overlaps' if inside else 'outside'} the 95% interval" in opt
    assert _n_images(_tagged(nb, "optimal-bits")) == 1
