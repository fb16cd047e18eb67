"""The registry of scaling laws that :func:`kscale.fit.fit_law` can fit.

A law is data, not a class hierarchy: its parameter names, the DataFrame columns it reads, a
human-readable formula, a function returning **log** predicted loss (the fit is done in log space,
Chinchilla Approach 3), which parameters are positive (optimised as their logarithm), bounds on the
others, and a grid of starting values. Built-ins:

* ``power``      L = E_k + A_k · T^(−α_k), one curve per precision k (T = ``total_bits``).
* ``offset``     L = E + A · T^(−α) · exp(c_k): one shared curve plus a per-precision offset
                 (Dettmers & Zettlemoyer 2022, §4: the curves for different k are "almost parallel").
* ``neff``       L = A · N_eff^(−α) + E, N_eff = N · (1 − exp(−k/γ)) (Kumar et al. 2024, Eq. 3-4).
* ``chinchilla`` L = E + A/N^α + B/D^β on ``n_params``, ``n_tokens`` (Hoffmann et al. 2022, App. D.2).

Degradation laws (``kind="degradation"``) model ``delta_<metric>`` (``kscale.results.add_delta``:
the quantized loss minus the same checkpoint's 16-bit loss), not the loss itself:

* ``qid``        ΔL = k · D^β / (N^α · P^γ) (Ouyang et al. 2025, "Low-Bit Quantization Favors
                 Undertrained LLMs"); P = ``bits``, D = ``n_tokens``, N = ``n_params``.
* ``ptq``        δ = C_T · e^(−P/γ_post) · D^γ_D / N^γ_N (Kumar et al. 2025, "Scaling Laws for
                 Precision", Eq. 2, the post-training term).

Both give β, γ_D > 0 when more training makes a checkpoint more fragile to quantization; the sign
is left free (bounded, not constrained) so the data can say otherwise.

A user law registers the same way::

    LAWS.register("mylaw", Law(name="mylaw", formula="L = E + A·N^(−α)", params=("E", "A", "alpha"),
                               columns=("n_params",), log_predict=my_fn, positive=("E", "A"),
                               grid={"E": (1.0, 2.0), "A": (1e2, 1e4), "alpha": (0.2, 0.5)}))

``log_predict(p, x)`` gets torch float64 tensors: ``p[name]`` broadcasts against ``x[column]``
(shape ``(batch, n_rows)`` or ``(batch, 1)`` against ``(n_rows,)``), so one formula serves a single
fit, a grid of starts and a thousand bootstrap resamples at once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from kscale.registry import Registry

LAW_KINDS = ("loss", "degradation")
LogPredict = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Law:
    """A parametric loss law.

    Args:
        name: registry / config name.
        formula: the law in words and symbols, shown in reports.
        params: law-level parameter names. Names in ``per_group`` get one value per group
            (fitted parameter ``f"{name}_{group value}"``, e.g. ``c_4``); the rest are shared.
        columns: DataFrame columns the law reads (besides ``group``).
        log_predict: returns log predicted loss from parameter and column tensors.
        positive: parameters that must be > 0; optimised as their logarithm, which both enforces
            the sign and makes a grid over orders of magnitude (A from 1 to 1e11) well scaled.
        grid: starting values (public units) per parameter: a tuple, or a callable of the observed
            loss array returning a tuple (e.g. E as fractions of the smallest loss).
        bounds: (low, high) bounds, public units, for parameters not in ``positive``.
        group: column whose values index ``per_group`` parameters (``bits``), or None.
        per_group: parameters with one value per group.
        zero_at_reference: per-group parameters fixed at 0 for the reference group (the largest
            group value, e.g. the 16-bit baseline), which makes offsets identifiable.
        irreducible: parameters that are the loss at infinite scale (``E``; per-group ``E_k``).
            When the true floor is known (the toy language's entropy rate) the fit bounds them
            below by it, because no model can beat it (:func:`kscale.fit.fit_law`, ``floor``).
        kind: ``"loss"`` (fits a metric) or ``"degradation"`` (fits ``delta_<metric>``).
        precision_params: parameters that carry the precision effect (γ of ``neff``, the offsets
            c_k of ``offset``); the report names their intervals when the law's precision effect
            is not identified (an interval reaching a value where precisions stop differing).
        budget_free_optimum: under this form the optimal k at a total-bits budget cannot depend on
            the budget (a parallel shift in log total bits, or N_eff ∝ N at a fixed cost per
            parameter): the report says so next to an answer built on it.
        varies_any: the report's automatic law choice considers this law only when at least one
            of these columns takes two values (``precision``'s training bits: on a study trained
            in one precision its γ's are not identified, and 13 parameters cost a minute).
    """

    name: str
    formula: str
    params: tuple[str, ...]
    columns: tuple[str, ...]
    log_predict: LogPredict
    positive: tuple[str, ...] = ()
    grid: Mapping[str, tuple[float, ...] | Callable] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    group: str | None = None
    per_group: tuple[str, ...] = ()
    zero_at_reference: tuple[str, ...] = ()
    irreducible: tuple[str, ...] = ()
    kind: str = "loss"
    description: str = ""
    precision_params: tuple[str, ...] = ()
    budget_free_optimum: bool = False
    varies_any: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.positive) | set(self.grid) | set(self.bounds) | set(self.per_group)
        unknown -= set(self.params)
        if unknown:
            raise ValueError(
                f"law {self.name!r}: positive/grid/bounds/per_group name parameters not in params "
                f"{self.params}: {sorted(unknown)}"
            )
        if self.per_group and self.group is None:
            raise ValueError(f"law {self.name!r}: per_group parameters need a group column; got group=None")
        if not set(self.zero_at_reference) <= set(self.per_group):
            raise ValueError(
                f"law {self.name!r}: zero_at_reference must be a subset of per_group {self.per_group}; "
                f"got {self.zero_at_reference}"
            )
        if set(self.zero_at_reference) & set(self.positive):
            raise ValueError(f"law {self.name!r}: a positive parameter cannot be fixed at 0")
        if not set(self.irreducible) <= set(self.positive):
            raise ValueError(f"law {self.name!r}: irreducible parameters must be positive; got {self.irreducible}")
        if not set(self.precision_params) <= set(self.params):
            raise ValueError(f"law {self.name!r}: precision_params {self.precision_params} not in params {self.params}")
        if self.kind not in LAW_KINDS:
            raise ValueError(f"law {self.name!r}: kind must be one of {LAW_KINDS}; got {self.kind!r}")

    @property
    def shared(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p not in self.per_group)

    @property
    def needs(self) -> tuple[str, ...]:
        """All columns read: ``columns`` plus the group column."""
        cols = list(self.columns)
        if self.group and self.group not in cols:
            cols.append(self.group)
        return tuple(cols)


LAWS: Registry[Law] = Registry("law")


def register_law(law: Law, *, overwrite: bool = False) -> Law:
    """Register ``law`` under ``law.name`` (so config names and registry names agree)."""
    return LAWS.register(law.name, law, overwrite=overwrite)


def get_law(name: str | Law) -> Law:
    """The law called ``name`` (a :class:`Law` passes through)."""
    return name if isinstance(name, Law) else LAWS.get(name)


# --------------------------------------------------------------------------------------------
# Built-in laws. All return log L, written with logsumexp so terms like A/N^α never overflow.
# --------------------------------------------------------------------------------------------

_LOG_A_GRID = tuple(math.exp(v) for v in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0))


def _e_grid(y) -> tuple[float, ...]:
    """E (the irreducible loss) lies below the smallest observed loss: start at fractions of it."""
    lo = float(min(y))
    return tuple(lo * f for f in (0.1, 0.5, 0.9))


def _lse(first: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """log Σ exp(terms), pairwise (logaddexp is far cheaper than stacking for logsumexp)."""
    out = first
    for t in rest:
        out = torch.logaddexp(out, t)
    return out


def _power(p, x):
    # log(E + A·T^-α) = LSE(log E, log A − α log T)
    return _lse(torch.log(p["E"]), torch.log(p["A"]) - p["alpha"] * torch.log(x["total_bits"]))


def _offset(p, x):
    # log(E + A·T^-α·e^c) = LSE(log E, log A − α log T + c)
    return _lse(torch.log(p["E"]), torch.log(p["A"]) - p["alpha"] * torch.log(x["total_bits"]) + p["c"])


def _neff(p, x):
    # N_eff = N (1 − e^{−k/γ}); log(A N_eff^-α + E)
    log_neff = torch.log(x["n_params"]) + torch.log(-torch.expm1(-x["bits"] / p["gamma"]))
    return _lse(torch.log(p["E"]), torch.log(p["A"]) - p["alpha"] * log_neff)


def _chinchilla(p, x):
    return _lse(
        torch.log(p["E"]),
        torch.log(p["A"]) - p["alpha"] * torch.log(x["n_params"]),
        torch.log(p["B"]) - p["beta"] * torch.log(x["n_tokens"]),
    )


_EXPONENT_BOUNDS = (0.0, 5.0)
_EXPONENT_GRID = (0.1, 0.3, 0.5, 1.0)

register_law(Law(
    name="power",
    irreducible=("E",),
    formula="L = E_k + A_k · T^(−α_k), T = total model bits, one curve per precision k",
    params=("E", "A", "alpha"),
    columns=("total_bits",),
    log_predict=_power,
    positive=("E", "A"),
    grid={"E": _e_grid, "A": _LOG_A_GRID, "alpha": _EXPONENT_GRID},
    bounds={"alpha": _EXPONENT_BOUNDS},
    group="bits",
    per_group=("E", "A", "alpha"),
    precision_params=("E", "A", "alpha"),
    description="Independent power law per precision: the most flexible form, and the one the k-bit "
    "paper found fits poorly across precisions when made bivariate (§4).",
))

register_law(Law(
    name="offset",
    irreducible=("E",),
    formula="L = E + A · T^(−α) · exp(c_k), c = 0 for the highest precision present",
    params=("E", "A", "alpha", "c"),
    columns=("total_bits",),
    log_predict=_offset,
    positive=("E", "A"),
    grid={"E": _e_grid, "A": _LOG_A_GRID, "alpha": _EXPONENT_GRID, "c": (0.0,)},
    bounds={"alpha": _EXPONENT_BOUNDS, "c": (-20.0, 20.0)},
    group="bits",
    per_group=("c",),
    zero_at_reference=("c",),
    precision_params=("c",),
    budget_free_optimum=True,
    description="Dettmers & Zettlemoyer (2022, §4) found the per-precision curves almost parallel, "
    "suggesting one base function plus a per-precision offset. Here the offset multiplies the "
    "reducible loss: e^(c_k)·T^(−α) = (T·e^(−c_k/α))^(−α), i.e. precision k behaves like the "
    "reference precision with e^(−c_k/α) times the total bits — a horizontal shift of one shared "
    "curve in log total bits. c_k > 0 means k-bit wastes bits relative to the reference.",
))

register_law(Law(
    name="neff",
    irreducible=("E",),
    formula="L = A · N_eff^(−α) + E, N_eff = N · (1 − exp(−k/γ))",
    params=("E", "A", "alpha", "gamma"),
    columns=("n_params", "bits"),
    log_predict=_neff,
    positive=("E", "A", "gamma"),
    grid={"E": _e_grid, "A": _LOG_A_GRID, "alpha": _EXPONENT_GRID, "gamma": (0.5, 1.0, 2.0, 4.0)},
    bounds={"alpha": _EXPONENT_BOUNDS},
    precision_params=("gamma",),
    budget_free_optimum=True,
    description="Kumar et al. 2024 ('Scaling Laws for Precision', Eq. 3-4): k-bit weights act like "
    "a smaller model with N_eff parameters; γ sets how fast precision saturates (they fit "
    "γ_w ≈ 2.7 for training-time weight precision).",
))

register_law(Law(
    name="chinchilla",
    irreducible=("E",),
    formula="L = E + A / N^α + B / D^β (N = n_params, D = n_tokens)",
    params=("E", "A", "B", "alpha", "beta"),
    columns=("n_params", "n_tokens"),
    log_predict=_chinchilla,
    positive=("E", "A", "B"),
    # Hoffmann et al. 2022 App. D.2 grid, as restated by Besiroglu et al. 2024: α, β ∈ {0, .5, …, 2},
    # e = log E ∈ {−1, −.5, …, 1}, a, b ∈ {0, 5, …, 25}. α = 0 sits on the bound, so start just off it.
    grid={
        "E": tuple(math.exp(v) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)),
        "A": _LOG_A_GRID,
        "B": _LOG_A_GRID,
        "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
        "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    },
    bounds={"alpha": _EXPONENT_BOUNDS, "beta": _EXPONENT_BOUNDS},
    description="Chinchilla's parametric loss (Hoffmann et al. 2022, Approach 3); kept so the fitter "
    "can be checked against Besiroglu et al.'s (2024) replication on the digitized runs.",
))


def _qid(p, x):
    # log(k · D^β / (N^α · P^γ)) — linear in the logs of N, D and P
    return (torch.log(p["k"]) + p["beta"] * torch.log(x["n_tokens"]) - p["alpha"] * torch.log(x["n_params"])
            - p["gamma"] * torch.log(x["bits"]))


def _ptq(p, x):
    # log(C_T · e^(−P/γ_post) · D^γ_D / N^γ_N)
    return (torch.log(p["C_T"]) - x["bits"] / p["gamma_post"] + p["gamma_D"] * torch.log(x["n_tokens"])
            - p["gamma_N"] * torch.log(x["n_params"]))


#: Exponents of the degradation laws may take either sign (the data decides whether degradation
#: grows with D); the bounds only keep the optimiser away from overflow.
_SIGNED_BOUNDS = (-10.0, 10.0)

register_law(Law(
    name="qid",
    formula="ΔL = k · D^β / (N^α · P^γ) (D = n_tokens, N = n_params, P = bits)",
    params=("k", "alpha", "beta", "gamma"),
    columns=("n_params", "n_tokens", "bits"),
    log_predict=_qid,
    positive=("k",),
    grid={"k": tuple(math.exp(v) for v in (-10.0, -5.0, 0.0, 5.0)), "alpha": (0.0, 0.3, 1.0),
          "beta": (0.0, 0.5, 1.0), "gamma": (1.0, 3.0, 6.0)},
    bounds={"alpha": _SIGNED_BOUNDS, "beta": _SIGNED_BOUNDS, "gamma": (-20.0, 20.0)},
    kind="degradation",
    description="Ouyang et al. 2025 ('Low-Bit Quantization Favors Undertrained LLMs'): quantization-"
    "induced degradation of Pythia checkpoints grows with training tokens (β > 0) and shrinks with "
    "size and bit width; summaries quote α ≈ 0.23, β ≈ 0.53, γ ≈ 5.5 (REFERENCES §3.2, unverified).",
))

register_law(Law(
    name="ptq",
    formula="δ = C_T · e^(−P/γ_post) · D^γ_D / N^γ_N (D = n_tokens, N = n_params, P = bits)",
    params=("C_T", "gamma_D", "gamma_N", "gamma_post"),
    columns=("n_params", "n_tokens", "bits"),
    log_predict=_ptq,
    positive=("C_T", "gamma_post"),
    grid={"C_T": tuple(math.exp(v) for v in (-10.0, -5.0, 0.0, 5.0)), "gamma_D": (0.0, 0.5, 1.0),
          "gamma_N": (0.0, 0.5, 1.0), "gamma_post": (0.5, 1.0, 2.0, 4.0)},
    bounds={"gamma_D": _SIGNED_BOUNDS, "gamma_N": _SIGNED_BOUNDS},
    kind="degradation",
    description="Kumar et al. 2025 ('Scaling Laws for Precision', Eq. 2): post-training quantization "
    "degradation, exponential in the post-training precision; they fit C_T = 0.0598, γ_D = 0.5068, "
    "γ_N = 0.3439, γ_post = 0.5907 (App. K), so beyond a critical D/N more pretraining hurts.",
))
