"""kscale's Hydra sweeper: quantization axes become in-job lists, models become jobs.

``python run_sweep.py model=opt,pythia bits=3,4,8 dtype=int,float`` is, for the basic sweeper,
2 x 3 x 2 = 12 jobs that each load a model. Loading costs far more than quantizing, so this
sweeper instead

1. turns comma lists of the quantization axes (``method, dtype, bits, blocksize, centered,
   exponent_bits, scale_bits, outlier_frac, seed``) and of ``model.sizes`` into list values
   (``bits=[3,4,8]``) that every job loops over with one loaded model;
2. takes the cartesian product of the remaining sweeps (``model=opt,pythia``, ``eval=a,b``, ...);
3. composes and validates each combination with :func:`kscale.config.build_plan` *before*
   launching anything (an invalid override fails here: nothing loaded, nothing written);
4. launches one job per model (family x size x revision) with ``model.sizes=[<size>]`` (and
   ``model.revisions=[<revision>]``), skipping models whose cells are all finished, so
   ``hydra/launcher=joblib|submitit_local|submitit_slurm`` spreads models over workers;
   with ``plan=true`` it launches nothing: it prints what every job would cost
   (:mod:`kscale.estimate`: cells to run and finished, tokens, FLOPs, hours, memory, disk);
5. after the jobs: exports the merged table, writes the report (``report=true``) and prints where
   things are; then re-raises the first job failure, so the exit code means something.

Grid values can also come from config, as with the basic sweeper: ``hydra.sweeper.params``
(``model: opt,pythia``) in an experiment file; the command line wins over it per key. Several
experiments in one command (``experiment=a,b``) each keep their own grid: the sweeper reads each
one's params from its composed config (Hydra's primary config, composed before the sweep, holds
none of them), so the command plans exactly the jobs of ``experiment=a`` plus ``experiment=b``.
"""
# no `from __future__ import annotations`: Hydra execs plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.

import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

def in_job_axes() -> "tuple[str, ...]":
    """Overrides whose comma lists stay inside a job: the grid's axes plus the model lists
    (``model.sizes``, ``model.revisions``), which the sweeper then splits into one job per
    model. One definition, in :mod:`kscale.sweep.grid`; imported on first use so that Hydra's
    plugin discovery (which imports this module for every Hydra app) stays cheap."""
    from kscale.sweep.grid import MODEL_AXES, QUANT_AXES

    return tuple(QUANT_AXES) + tuple(MODEL_AXES)


def model_list_axes() -> "tuple[str, ...]":
    from kscale.sweep.grid import MODEL_AXES

    return tuple(MODEL_AXES)


def training_axes() -> "tuple[str, ...]":
    """Training-precision options (``model.provider_options.train_bits_w`` ...): one job per value
    like any other sweep, but added with ``++`` so the model config need not name them (the
    default ladder leaves them out, which keeps its cache key and rows those of full precision)."""
    from kscale.sweep.grid import TRAINING_AXES

    return tuple(TRAINING_AXES)


def __getattr__(name: str) -> Any:  # IN_JOB_AXES as a module attribute, resolved lazily
    if name == "IN_JOB_AXES":
        return in_job_axes()
    raise AttributeError(name)


@dataclass
class KscaleSweeperConf:
    _target_: str = "hydra_plugins.kscale_sweeper.kscale_sweeper.KscaleSweeper"
    #: launch at most this many jobs at a time (None = all at once)
    max_batch_size: Optional[int] = None
    #: default grid, e.g. {"model": "opt,pythia"}; the command line wins per key
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="kscale", node=KscaleSweeperConf,
                             provider="kscale")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def split_overrides(overrides: Sequence[Any]) -> "OrderedDict[str, List[str]]":
    """Per override key, the list of ``key=value`` strings jobs take (one for non-sweeps).

    In-job axes get a single ``key=[v1,v2,...]`` entry; other sweeps one entry per value.
    A later override of the same key replaces an earlier one (command line over config params).
    """
    out: "OrderedDict[str, List[str]]" = OrderedDict()
    in_job = in_job_axes()
    training = training_axes()
    for o in overrides:
        key = o.get_key_element()
        bare = key.lstrip("+~")
        if bare in training and not key.startswith("~"):
            key = f"++{bare}"  # the last of params / command line wins, whatever its prefix
        out.pop(key, None)
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise HydraException(
                    f"{key}: interval sweeps are not supported by the kscale sweeper; "
                    "give a comma list or range(...)"
                )
            values = list(o.sweep_string_iterator())
            if bare in in_job:
                out[key] = [f"{key}=[{','.join(values)}]"]
            else:
                out[key] = [f"{key}={v}" for v in values]
        else:
            out[key] = [f"{key}={o.get_value_element_as_str()}"]
    return out


class InvalidSweepConfig(CompactHydraException):
    """A kscale ConfigError; Hydra prints just the message (no stack) and exits with code 1."""


class KscaleSweeper(Sweeper):
    """Group the grid by model; see the module docstring."""

    def __init__(self, max_batch_size: Optional[int] = None,
                 params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.all_models: List[Any] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def plan_jobs(self, arguments: List[str]) -> "tuple[List[Any], Dict[str, Any]]":
        """Compose, validate and expand: ``([(overrides, plan, model_spec), ...], {dir: plan})``.

        Also sets ``self.all_models``: every ``(plan, model_spec)`` of the sweep, finished or
        not (what ``plan=true`` estimates).
        """
        assert self.hydra_context is not None and self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        experiments = [v for k, v in split_overrides(parser.parse_overrides(list(arguments))).items()
                       if k.lstrip("+~") == "experiment"]
        if not experiments or len(experiments[0]) < 2:
            jobs, plans, self.all_models = self._plan_grid(self.params, list(arguments))
            return jobs, plans
        # several experiments in one command: Hydra composed the primary config without any of
        # them, so self.params holds none of their grids. Each experiment's own
        # hydra.sweeper.params (its list of models) must be read from its composed config, or
        # every experiment would silently run only its single default model.
        rest = [a for a in arguments if a.split("=", 1)[0].lstrip("+~") != "experiment"]
        jobs: List[Any] = []
        plans: "OrderedDict[str, Any]" = OrderedDict()
        every_model: List[Any] = []
        for choice in experiments[0]:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [choice])
            params = dict(cfg.hydra.sweeper.get("params") or {})
            more, more_plans, models = self._plan_grid(params, [choice] + rest)
            jobs.extend(more)
            for key, plan in more_plans.items():
                plans.setdefault(key, plan)
            every_model.extend(models)
        self.all_models = every_model
        return jobs, plans

    def _plan_grid(self, params: Dict[str, str],
                   arguments: List[str]) -> "tuple[List[Any], Dict[str, Any], List[Any]]":
        """:meth:`plan_jobs` for one grid: ``params`` (an experiment's defaults) then ``arguments``;
        also returns every ``(plan, model_spec)`` of the grid, finished or not."""
        from kscale.config import ConfigError, build_plan
        from kscale.sweep import pending_models

        assert self.hydra_context is not None and self.config is not None
        args = [f"{k}={v}" for k, v in params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        per_key = split_overrides(parser.parse_overrides(args))
        sweep_keys = [k for k, v in per_key.items() if len(v) > 1]
        if "name" in sweep_keys or "results_dir" in sweep_keys:
            raise HydraException("name and results_dir cannot be swept: one study per command")
        jobs = []
        plans: "OrderedDict[str, Any]" = OrderedDict()
        models: List[Any] = []
        model_lists = model_list_axes()
        for combo in itertools.product(*per_key.values()):
            base = [o for o in combo if o.split("=", 1)[0].lstrip("+~") not in model_lists]
            lists = [o for o in combo if o not in base]
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(base) + lists)
            try:
                plan = build_plan(cfg)
            except ConfigError as err:
                raise InvalidSweepConfig(str(err)) from None
            plans.setdefault(str(plan.study_dir), plan)
            has_revisions = "revisions" in (cfg.get("model") or {})
            pending = set(pending_models(plan))
            for spec in plan.models:
                models.append((plan, spec))
                if spec not in pending:
                    log.info("%s: every cell is finished (rerun=true to redo); no job", _job_label(spec, base))
                    continue
                overrides = list(base) + [f"model.sizes=[{_quote(spec.size)}]"]
                revision = getattr(spec, "revision", None)
                if has_revisions:  # null too: else the job would re-read an experiment's revisions
                    overrides.append(f"model.revisions=[{_quote(revision)}]" if revision is not None
                                     else "model.revisions=null")
                jobs.append((overrides, plan, spec))
        return jobs, plans, models

    def sweep(self, arguments: List[str]) -> Any:
        from kscale.sweep.finish import finish_study

        assert self.launcher is not None and self.config is not None
        jobs, plans = self.plan_jobs(arguments)
        settings = _plan_settings(self.config)
        if settings["plan"]:  # estimate only: nothing launched, loaded or written
            from kscale.estimate import report_plan

            _, text = report_plan(list(plans.values()), settings, models=self.all_models)
            print(text, flush=True)  # noqa: T201 - the CLI's output
            return []
        _preflight(plans.values(), self.config if jobs else None)
        if not jobs:
            log.info("nothing to run: every cell of this sweep is finished")
        batch_size = self.max_batch_size or max(len(jobs), 1)
        returns: List[Any] = []
        first_failure = None
        for start in range(0, len(jobs), batch_size):
            batch = [overrides for overrides, _, _ in jobs[start:start + batch_size]]
            log.info("launching %d job(s): %s", len(batch),
                     ", ".join(_job_label(s, o) for o, _, s in jobs[start:start + batch_size]))
            results = self.launcher.launch(batch, initial_job_idx=start)
            for r in results:
                try:
                    _ = r.return_value  # raises the job's exception if it failed
                except Exception as err:  # noqa: BLE001 - re-raised after the study is finished
                    first_failure = first_failure or err
            returns.append(results)
        report = bool(self.config.get("report", True))
        ran = {str(plan.study_dir) for _, plan, _ in jobs}
        for key, plan in plans.items():
            # a command that ran nothing leaves an up-to-date study as it was (committed results
            # stay byte-identical; `python -m kscale.report <study>` redraws on demand); rows
            # written since the table (jobs that outlived an earlier command) are exported
            write = key in ran or not _exported(plan.study_dir)
            summary = finish_study(plan.study_dir, report=report and first_failure is None,
                                   write=write, tracking=plan.tracking)
            print(summary.text(), flush=True)  # noqa: T201 - the CLI's final output
        if first_failure is not None:
            raise first_failure
        return returns


def _exported(study_dir: Any) -> bool:
    """``table.parquet`` exists and is no older than every rows file."""
    table = study_dir / "table.parquet"
    rows = list((study_dir / "rows").glob("*.jsonl"))
    return table.exists() and all(r.stat().st_mtime <= table.stat().st_mtime for r in rows)


def _preflight(plans: Any, config: Optional[DictConfig]) -> None:
    """kscale.sweep.preflight before any work: the study folders are writable, wandb online can
    log, and (when jobs are to be launched through SLURM, ``config`` given) ``sbatch`` answers."""
    from omegaconf import OmegaConf

    from kscale.sweep.preflight import PreflightError, preflight

    launcher = None
    if config is not None:
        node = OmegaConf.select(config, "hydra.launcher", default=None)
        try:
            launcher = OmegaConf.to_container(node, resolve=True) if node is not None else None
        except Exception:  # noqa: BLE001 - an unresolvable launcher field: check what resolves
            launcher = OmegaConf.to_container(node, resolve=False)
    try:
        preflight(list(plans), launcher=launcher)
    except PreflightError as err:
        raise InvalidSweepConfig(str(err)) from None


def _job_label(spec: Any, overrides: Sequence[str] = ()) -> str:
    revision = getattr(spec, "revision", None)
    training = training_axes()
    variant = [o.split("=", 1) for o in overrides if o.split("=", 1)[0].lstrip("+~") in training]
    text = "".join(f",{k.lstrip('+~').rsplit('.', 1)[1]}={v}" for k, v in variant)
    return f"{spec.family}-{spec.size}" + (f"@{revision}" if revision else "") + (f"[{text[1:]}]" if text else "")


def _plan_settings(config: DictConfig) -> Dict[str, Any]:
    """``plan``, ``plan_out``, ``plan_device``, ``plan_probe``, ``plan_devices`` (defaults if absent)."""
    from omegaconf import OmegaConf

    from kscale.estimate import plan_settings

    keys = ("plan", "plan_out", "plan_device", "plan_probe", "plan_devices")
    values = {}
    for k in keys:
        v = OmegaConf.select(config, k, default=None)
        values[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    return plan_settings({k: v for k, v in values.items() if v is not None})
