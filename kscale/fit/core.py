"""Fitting a law to a results table: Chinchilla Approach 3, done the way Besiroglu et al. say.

Objective: the **sum** over rows of Huber_δ(log L̂ − log L) with δ = 1e-3 (Hoffmann et al. 2022,
App. D.2). Besiroglu et al. (2024, "Chinchilla Scaling: A replication attempt") found the original
fit averaged the Huber losses instead, shrinking the objective ~400× so L-BFGS hit its tolerance
before converging; summing keeps the objective on a scale where the optimiser's default tolerances
mean something. ``reduction="mean"`` exists only to reproduce that failure in tests.

Optimiser: L-BFGS-B with exact gradients (torch autograd, float64) from the best ``n_starts`` points
of the law's Cartesian grid of starts (all grid points are scored in one vectorised pass, then the
most promising are optimised), keeping the best. Every fit reports convergence, status and the
final gradient norm (Open-Athena ``SurfaceFitResult``-style: soft problems are data, hard ones raise).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from kscale.fit.degenerate import CleanReport, clean_points, metric_kind
from kscale.fit.laws import Law, get_law

log = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
REDUCTIONS = ("sum", "mean")
#: L-BFGS-B options. Tighter than scipy's defaults because the Huber objective with δ = 1e-3 is
#: nearly an L1 loss whose gradient is small near the optimum.
DEFAULT_OPTIONS = {"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-9, "maxls": 50}
DEFAULT_N_STARTS = 8


class FitError(ValueError):
    """A fit that cannot be attempted (too few points, unusable data)."""


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics (``acc_*``, ``top1_*``) improve upward; losses downward."""
    return metric_kind(metric) in ("acc", "top1")


def _group_label(v) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


@dataclass(frozen=True)
class Layout:
    """Maps the law's parameters (shared and per-group) onto a flat internal vector θ.

    Positive parameters are stored as logarithms. A per-group parameter listed in
    ``zero_at_reference`` has no slot for the reference group (it is 0 there). ``floors`` gives
    public lower bounds of positive parameters (the known irreducible loss), as (name, value) pairs.
    """

    law: Law
    groups: tuple = ()
    floors: tuple[tuple[str, float], ...] = ()

    def floor(self, param: str) -> float | None:
        return dict(self.floors).get(param)

    @property
    def reference(self):
        return max(self.groups) if self.groups else None

    @property
    def slots(self) -> tuple[tuple[str, str, object], ...]:
        """(public name, law parameter, group value or None) for each element of θ."""
        out = []
        for p in self.law.params:
            if p in self.law.per_group:
                for g in self.groups:
                    if p in self.law.zero_at_reference and g == self.reference:
                        continue
                    out.append((f"{p}_{_group_label(g)}", p, g))
            else:
                out.append((p, p, None))
        return tuple(out)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s[0] for s in self.slots)

    def to_internal(self, value: float, param: str) -> float:
        return math.log(value) if param in self.law.positive else float(value)

    def to_public(self, theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=float, copy=True)
        for j, (_, p, _) in enumerate(self.slots):
            if p in self.law.positive:
                out[..., j] = np.exp(out[..., j])
        return out

    def bounds(self) -> list[tuple[float | None, float | None]]:
        out = []
        for _, p, _ in self.slots:
            if p in self.law.positive:
                fl = self.floor(p)
                out.append((-700.0 if fl is None else math.log(fl), 700.0))  # log-space: keeps exp() finite
            else:
                out.append(tuple(self.law.bounds.get(p, (None, None))))
        return out

    def group_index(self, df: pd.DataFrame) -> np.ndarray | None:
        if not self.law.per_group:
            return None
        vals = df[self.law.group].to_numpy(dtype=float)
        lookup = {float(g): i for i, g in enumerate(self.groups)}
        unknown = sorted({v for v in vals if v not in lookup})
        if unknown:
            raise ValueError(
                f"law {self.law.name!r} has per-{self.law.group} parameters only for "
                f"{[_group_label(g) for g in self.groups]}; cannot predict {self.law.group}={unknown}"
            )
        return np.array([lookup[v] for v in vals], dtype=np.int64)

    def param_tensors(self, theta: torch.Tensor, gidx: np.ndarray | None) -> dict[str, torch.Tensor]:
        """θ (batch, P) → {law parameter: (batch, 1) shared or (batch, n_rows) per-group}."""
        out: dict[str, torch.Tensor] = {}
        slots = self.slots
        for p in self.law.params:
            if p in self.law.per_group:
                cols = []
                for g in self.groups:
                    j = next((j for j, s in enumerate(slots) if s[1] == p and s[2] == g), None)
                    cols.append(theta.new_zeros(theta.shape[0]) if j is None else theta[:, j])
                per_g = torch.stack(cols, dim=1)  # (batch, G)
                if p in self.law.positive:
                    per_g = torch.exp(per_g)
                out[p] = per_g[:, torch.as_tensor(gidx)]
            else:
                j = next(j for j, s in enumerate(slots) if s[1] == p)
                v = theta[:, j : j + 1]
                out[p] = torch.exp(v) if p in self.law.positive else v
        return out


def _x_tensors(law: Law, df: pd.DataFrame) -> dict[str, torch.Tensor]:
    return {c: torch.tensor(df[c].to_numpy(dtype=float), dtype=torch.float64) for c in law.needs}


def _target(y_values: np.ndarray, y: str) -> np.ndarray:
    """The positive, lower-is-better quantity a law models: the loss itself, or 1 − accuracy;
    for a degradation ``delta_<metric>``, the degradation (−Δ for accuracy-like metrics)."""
    if y.startswith("delta_"):
        return -y_values if higher_is_better(y[len("delta_"):]) else y_values
    return 1.0 - y_values if higher_is_better(y) else y_values


def _from_target(t: np.ndarray, y: str) -> np.ndarray:
    """Inverse of :func:`_target` (its own inverse: both maps are involutions)."""
    return _target(t, y)


def resolve_floor(df: pd.DataFrame, y: str, floor: float | str | None) -> float | None:
    """The known lower bound of the law's irreducible term in ``y``'s fitted units, or None.

    ``"auto"``: the table's ``entropy_rate`` (the toy language's exact entropy rate, nats/token)
    for ``nll_*`` metrics and its exponential for ``ppl_*``; nothing for other metrics (bits per
    byte, accuracy, degradation), whose floor the entropy rate does not give.
    """
    if floor is None:
        return None
    if isinstance(floor, str):
        if floor != "auto":
            raise ValueError(f"floor must be a number, 'auto' or None; got {floor!r}")
        if "entropy_rate" not in df.columns:
            return None
        er = pd.to_numeric(df["entropy_rate"], errors="coerce").dropna().unique()
        if len(er) == 0:
            return None
        if len(er) > 1:
            log.warning("rows carry %d different entropy rates; the floor is the smallest, %.6g", len(er), er.min())
        h = float(np.min(er))
        kind = y.split("_", 1)[0]
        if kind == "nll":
            return h
        if kind == "ppl":
            return math.exp(h)
        return None
    value = float(floor)
    if not value > 0:
        raise ValueError(f"floor must be > 0 (the law's irreducible loss is positive); got {floor!r}")
    return value


def se_weight_column(df: pd.DataFrame, y: str) -> str | None:
    """``<y>_se`` when every row to fit carries a finite, positive standard error, else None."""
    col = f"{y}_se"
    if col not in df.columns or df.empty:
        return None
    se = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    return col if bool(np.all(np.isfinite(se) & (se > 0))) else None


def residual_scale(df: pd.DataFrame, y: str, se: str | None) -> torch.Tensor | None:
    """Per-point noise of the log target, relative to its median (None: unweighted).

    A point measured with standard error s on a value v has log-space noise s/|v|; dividing each
    log residual by that noise over its median weights the points by their SE (issue 19 §2) while
    keeping the typical residual on the scale Huber's δ = 1e-3 was chosen for.
    """
    if se is None:
        return None
    rel = pd.to_numeric(df[se], errors="coerce").to_numpy(dtype=float) / np.abs(_target(df[y].to_numpy(dtype=float), y))
    return torch.as_tensor(rel / np.median(rel), dtype=torch.float64)


class Problem:
    """Data + layout: evaluates the Huber objective for a batch of parameter vectors."""

    def __init__(self, layout: Layout, df: pd.DataFrame, y: str, *, delta: float, reduction: str,
                 se: str | None = None):
        self.layout = layout
        self.x = _x_tensors(layout.law, df)
        self.gidx = layout.group_index(df)
        t = _target(df[y].to_numpy(dtype=float), y)
        if np.any(t <= 0):
            raise FitError(f"law fits need a positive loss; {y} gives non-positive values {t[t <= 0][:5]}")
        self.log_y = torch.as_tensor(np.log(t), dtype=torch.float64)
        self.scale = residual_scale(df, y, se)
        self.n = len(df)
        self.delta = delta
        self.reduction = reduction

    def residual(self, theta: torch.Tensor) -> torch.Tensor:
        """(batch, n) log residuals, divided by each point's relative noise when the fit is weighted."""
        r = self.log_pred(theta) - self.log_y
        return r if self.scale is None else r / self.scale

    def log_pred(self, theta: torch.Tensor) -> torch.Tensor:
        p = self.layout.param_tensors(theta, self.gidx)
        out = self.layout.law.log_predict(p, self.x)
        return out.expand(theta.shape[0], self.n)

    def objective(self, theta: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(batch,) summed (or averaged) Huber loss of log residuals; ``weights`` (batch, n) = bootstrap counts."""
        r = self.residual(theta)
        h = torch.nn.functional.huber_loss(r, torch.zeros_like(r), reduction="none", delta=self.delta)
        h = torch.where(torch.isfinite(h), h, torch.full_like(h, 1e300))
        if weights is not None:
            h = h * weights
        total = h.sum(dim=1)
        return total / self.n if self.reduction == "mean" else total


@contextlib.contextmanager
def torch_single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the duration (restored afterwards).

    The fit's tensors are tiny; with several threads torch's OpenMP workers spin between calls
    and steal the core that scipy's L-BFGS-B needs (measured: 3x slower on a 2-core machine).
    Likewise scipy's OpenBLAS threads around each L-BFGS-B step; those are limited through
    ``threadpoolctl``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas_single_thread():
            yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def _blas_single_thread() -> Iterator[None]:
    """Limit the BLAS that scipy/numpy bundle to one thread for the duration (threadpoolctl,
    the maintained tool for exactly this, rather than poking OpenBLAS's C API by hand)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def minimize_batch(
    problem: Problem,
    theta0: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    options: Mapping | None = None,
):
    """L-BFGS-B on the sum of independent objectives, one per row of ``theta0`` (batch, P).

    Because the objectives share no parameters, minimising their sum minimises each; one scipy
    call with exact gradients replaces a Python loop over a thousand bootstrap resamples.
    Returns (theta (batch, P), per-row objective, per-row gradient norm, scipy result).
    """
    opts = dict(DEFAULT_OPTIONS)
    opts.update(options or {})
    B, P = theta0.shape
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    bounds = problem.layout.bounds() * B

    def fun(flat: np.ndarray):
        th = torch.tensor(flat.reshape(B, P), dtype=torch.float64, requires_grad=True)
        f = problem.objective(th, w).sum()
        (g,) = torch.autograd.grad(f, th)
        return float(f.detach()), g.numpy().ravel().astype(float)

    with torch_single_thread():
        res = minimize(fun, np.asarray(theta0, dtype=float).ravel(), jac=True, method="L-BFGS-B",
                       bounds=bounds, options=opts)
    theta = res.x.reshape(B, P)
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    per = problem.objective(th, w)
    (g,) = torch.autograd.grad(per.sum(), th)
    return theta, per.detach().numpy(), np.linalg.norm(_projected(g.numpy(), theta, problem.layout.bounds()), axis=1), res


def _projected(g: np.ndarray, theta: np.ndarray, bounds) -> np.ndarray:
    """Gradient with components that push into an active bound zeroed (L-BFGS-B's stationarity)."""
    g = g.copy()
    for j, (lo, hi) in enumerate(bounds):
        if lo is not None:
            g[:, j] = np.where((theta[:, j] <= lo + 1e-12) & (g[:, j] > 0), 0.0, g[:, j])
        if hi is not None:
            g[:, j] = np.where((theta[:, j] >= hi - 1e-12) & (g[:, j] < 0), 0.0, g[:, j])
    return g


@dataclass(frozen=True, eq=False)
class LawFit:
    """A fitted law.

    Attributes:
        law: the law's name.
        y: the metric column fitted (``acc_*`` metrics are fitted as 1 − accuracy).
        params: fitted values, unrounded, keyed by the layout's names (``E``, ``alpha``, ``c_4`` …).
        loss: final objective (sum of Huber losses unless ``reduction="mean"``).
        n_points: rows used.
        converged: the optimiser reported success.
        status: the optimiser's message.
        grad_norm: norm of the projected gradient at the solution.
        n_iter: L-BFGS-B iterations of the best start.
        theta: internal parameter vector (positive parameters as logarithms).
        layout: maps names onto ``theta``.
        data: the cleaned rows that were fitted.
        clean: what :func:`clean_points` masked.
        delta, reduction: the objective used.
        start: the grid start that won (public units).
        se_column: the standard-error column the points were weighted by (None: unweighted).
    """

    law: str
    y: str
    params: dict
    loss: float
    n_points: int
    converged: bool
    status: str
    grad_norm: float
    n_iter: int
    theta: np.ndarray = field(repr=False)
    layout: Layout = field(repr=False)
    data: pd.DataFrame = field(repr=False)
    clean: CleanReport | None = field(default=None, repr=False)
    delta: float = HUBER_DELTA
    reduction: str = "sum"
    start: dict = field(default_factory=dict, repr=False)
    se_column: str | None = None

    @property
    def law_spec(self) -> Law:
        return self.layout.law

    @property
    def floors(self) -> dict[str, float]:
        """Lower bounds imposed on irreducible parameters (e.g. ``{"E": entropy rate}``)."""
        return dict(self.layout.floors)

    def at_floor(self, rtol: float = 1e-6) -> list[str]:
        """Fitted parameters sitting on their floor: the data wanted them lower than possible."""
        out = []
        for name, p, _ in self.layout.slots:
            fl = self.layout.floor(p)
            if fl is not None and self.params[name] <= fl * (1 + rtol):
                out.append(name)
        return out

    def problem(self, df: pd.DataFrame | None = None) -> Problem:
        return Problem(self.layout, self.data if df is None else df, self.y, delta=self.delta, reduction=self.reduction,
                       se=self.se_column)

    def predict_batch(self, df: pd.DataFrame, thetas: np.ndarray) -> np.ndarray:
        """Predictions (in ``y`` units) for each row of ``df`` under each θ in ``thetas`` (batch, P)."""
        x = _x_tensors(self.law_spec, df)
        gidx = self.layout.group_index(df)
        with torch.no_grad():
            th = torch.as_tensor(np.atleast_2d(thetas), dtype=torch.float64)
            p = self.layout.param_tensors(th, gidx)
            out = torch.exp(self.law_spec.log_predict(p, x)).expand(th.shape[0], len(df)).numpy()
        return _from_target(out, self.y)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Predicted ``y`` for each row of ``df`` (needs the law's columns)."""
        missing = [c for c in self.law_spec.needs if c not in df.columns]
        if missing:
            raise ValueError(f"law {self.law!r} needs columns {list(self.law_spec.needs)}; missing {missing}")
        return self.predict_batch(df, self.theta[None, :])[0]

    def residuals(self) -> np.ndarray:
        """log observed − log predicted loss on the fitted rows."""
        obs = _target(self.data[self.y].to_numpy(dtype=float), self.y)
        pred = _target(self.predict(self.data), self.y)
        return np.log(obs) - np.log(pred)


def _grid_starts(layout: Layout, y_target: np.ndarray, grid: Mapping | None) -> tuple[list[str], np.ndarray]:
    """Cartesian grid over law-level parameters (per-group parameters share the start value)."""
    law = layout.law
    spec = dict(law.grid)
    spec.update(grid or {})
    axes = []
    for p in law.params:
        vals = spec.get(p)
        if vals is None:
            vals = (1.0,) if p in law.positive else (0.0,)
        if callable(vals):
            vals = vals(y_target)
        fl = layout.floor(p)
        if fl is not None:
            # start between the floor and the smallest observation instead of below the floor
            top = float(np.min(y_target))
            vals = tuple(fl + f * (top - fl) for f in (0.01, 0.5, 0.9)) if top > fl else (fl * (1 + 1e-6),)
        axes.append(tuple(float(v) for v in vals))
    starts = []
    for combo in itertools.product(*axes):
        by_param = dict(zip(law.params, combo))
        theta = []
        for _, p, _ in layout.slots:
            v = by_param[p]
            fl = layout.floor(p)
            if fl is not None:
                v = max(v, fl)
            lo, hi = law.bounds.get(p, (None, None)) if p not in law.positive else (None, None)
            if lo is not None:
                v = max(v, lo)
            if hi is not None:
                v = min(v, hi)
            theta.append(layout.to_internal(v, p))
        starts.append(theta)
    return list(law.params), np.array(starts, dtype=float)


def fit_law(
    df: pd.DataFrame,
    law: str | Law = "offset",
    *,
    y: str = "nll_wikitext2",
    degenerate: str = "mask",
    delta: float = HUBER_DELTA,
    reduction: str = "sum",
    grid: Mapping | None = None,
    n_starts: int | None = DEFAULT_N_STARTS,
    options: Mapping | None = None,
    init: Mapping[str, float] | None = None,
    warn: bool = True,
    floor: float | str | None = "auto",
    weigh_by_se: bool = True,
) -> LawFit:
    """Fit ``law`` to the rows of ``df`` (Chinchilla Approach 3 with a summed Huber loss).

    Args:
        df: results table (``kscale.results.load_results``) or any frame with the law's columns.
        law: registry name or :class:`Law`.
        y: metric column; ``acc_*``/``top1_*`` are fitted as error rate 1 − y.
        degenerate: ``"mask"`` / ``"clip"`` / ``"keep"`` collapsed models (see :func:`clean_points`).
        delta: Huber δ in log-loss units (1e-3 as in Hoffmann et al.).
        reduction: ``"sum"`` (correct) or ``"mean"`` (the original Chinchilla bug, for tests).
        grid: overrides of the law's starting grid, ``{param: values}``.
        n_starts: optimise from this many best-scoring grid points (None: all of them).
        options: L-BFGS-B options (defaults: ``DEFAULT_OPTIONS``).
        init: a single explicit start (public units; overrides the grid), e.g. for warm starts.
        warn: warn about masked rows.
        floor: lower bound of the law's irreducible parameters (``Law.irreducible``, e.g. E) in
            ``y``'s units: a number, None, or ``"auto"`` (default) = the table's ``entropy_rate``
            when it has one (:func:`resolve_floor`). A loss law fitted without it can put E far
            below a loss no model can beat and extrapolate below it.
        weigh_by_se: when every fitted row carries ``<y>_se`` (the evaluation's standard errors),
            weight the points by it (:func:`residual_scale`); rows without: unweighted.

    Returns:
        LawFit with unrounded parameters and the optimiser's diagnostics.

    Raises:
        FitError: fewer usable points than parameters, or a non-positive target.
        ValueError: unknown law / reduction / missing columns.
    """
    spec = get_law(law)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if delta <= 0:
        raise ValueError(f"Huber delta must be > 0; got {delta!r}")
    clean, report = clean_points(df, y, columns=spec.columns, degenerate=degenerate, warn=warn)
    if spec.group and spec.group not in clean.columns:
        raise ValueError(f"law {spec.name!r} groups by column {spec.group!r}, which is not in the table")
    groups = tuple(sorted(float(g) for g in clean[spec.group].unique())) if spec.per_group else ()
    fl = resolve_floor(df, y, floor) if spec.irreducible else None
    layout = Layout(spec, groups, floors=tuple((p, fl) for p in spec.irreducible) if fl is not None else ())

    # A law with only per-group parameters is separable: fit each group on its own (each gets the
    # full grid of starts), then merge. Joint fitting would share one start across all groups.
    se = se_weight_column(clean, y) if weigh_by_se else None
    if spec.per_group and not spec.shared and len(groups) > 1:
        return _fit_separable(clean, report, spec, layout, y=y, delta=delta, reduction=reduction, grid=grid,
                              n_starts=n_starts, options=options, init=init, floor=fl, weigh_by_se=weigh_by_se,
                              se=se)

    n_par = len(layout.slots)
    if len(clean) < n_par:
        raise FitError(
            f"law {spec.name!r} has {n_par} parameters ({', '.join(layout.names)}) but only {len(clean)} "
            f"usable points for {y} (of {len(df)} rows; excluded: {report.message()}); "
            "need at least as many points as parameters"
        )
    problem = Problem(layout, clean, y, delta=delta, reduction=reduction, se=se)
    if init is not None:
        starts = np.array([[layout.to_internal(_above_floor(layout, p, init[name] if name in init else init[p]), p)
                            for name, p, _ in layout.slots]])
    else:
        _, starts = _grid_starts(layout, _target(clean[y].to_numpy(dtype=float), y), grid)
        if n_starts is not None and len(starts) > n_starts:
            with torch.no_grad():
                scores = problem.objective(torch.as_tensor(starts, dtype=torch.float64)).numpy()
            scores = np.where(np.isfinite(scores), scores, np.inf)
            starts = starts[np.argsort(scores, kind="stable")[:n_starts]]

    best = None
    for s in starts:
        theta, per, gn, res = minimize_batch(problem, s[None, :], options=options)
        if best is None or per[0] < best[1]:
            best = (theta[0], per[0], gn[0], res, s)
    theta, loss, gnorm, res, s = best
    public = layout.to_public(theta)
    fit = LawFit(
        law=spec.name, y=y, params=dict(zip(layout.names, map(float, public))), loss=float(loss),
        n_points=len(clean), converged=bool(res.success), status=str(res.message), grad_norm=float(gnorm),
        n_iter=int(res.nit), theta=theta, layout=layout, data=clean, clean=report, delta=delta,
        reduction=reduction, start=dict(zip(layout.names, map(float, layout.to_public(s)))), se_column=se,
    )
    log.info("fitted law=%s y=%s n=%d loss=%.6g converged=%s grad_norm=%.2e params=%s",
             spec.name, y, fit.n_points, fit.loss, fit.converged, fit.grad_norm,
             {k: round(v, 4) for k, v in fit.params.items()})
    if not fit.converged:
        log.warning("law=%s did not converge: %s", spec.name, fit.status)
    return fit


def _above_floor(layout: Layout, param: str, value: float) -> float:
    fl = layout.floor(param)
    return value if fl is None else max(float(value), fl * (1 + 1e-9))


def _fit_separable(clean, report, spec, layout, **kw) -> LawFit:
    fits = {}
    init = kw.pop("init", None)
    se = kw.pop("se", None)
    for g in layout.groups:
        sub = clean[clean[spec.group].astype(float) == g]
        sub_init = None if init is None else {p: init.get(f"{p}_{_group_label(g)}", init.get(p)) for p in spec.params}
        try:
            fits[g] = fit_law(sub, spec, **kw, init=sub_init, degenerate="keep", warn=False)
        except FitError as e:
            raise FitError(f"{spec.group}={_group_label(g)}: {e}") from None
    theta = np.array([fits[g].theta[spec.params.index(p)] for _, p, g in layout.slots])
    public = layout.to_public(theta)
    problem = Problem(layout, clean, kw["y"], delta=kw["delta"], reduction=kw["reduction"], se=se)
    th = torch.tensor(theta[None, :], dtype=torch.float64, requires_grad=True)
    obj = problem.objective(th)
    (g,) = torch.autograd.grad(obj.sum(), th)
    gn = float(np.linalg.norm(_projected(g.numpy(), theta[None, :], layout.bounds())))
    worst = [f for f in fits.values() if not f.converged]
    return LawFit(
        law=spec.name, y=kw["y"], params=dict(zip(layout.names, map(float, public))), loss=float(obj.detach()[0]),
        n_points=len(clean), converged=not worst,
        status="; ".join(f"{spec.group}={_group_label(g)}: {f.status}" for g, f in fits.items()),
        grad_norm=gn, n_iter=int(sum(f.n_iter for f in fits.values())), theta=theta, layout=layout, data=clean,
        clean=report, delta=kw["delta"], reduction=kw["reduction"], se_column=se,
    )
