"""Optuna pieces of an adaptive sweep: samplers and pruners by short name, the sweep's
space as Optuna distributions, and the study's journal storage in the map folder."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..engine import folder_files
from .sweeps import Choice, IntUniform, LogUniform, Uniform

SAMPLERS = ("tpe", "random", "cmaes", "qmc")
PRUNERS = ("hyperband", "median", "successive_halving", "none")


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError("adaptive sweeps (sampler=...) need Optuna: pip install "
                          "'htcml_jupyter[optuna]' (or pip install optuna)") from None
    return optuna


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (study created, trial finished) kept off stderr meanwhile."""
    logger = logging.getLogger("optuna")
    before = logger.level
    logger.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(before)


def make_sampler(sampler: Any, seed: int) -> Any:
    """An Optuna sampler from a short name (:data:`SAMPLERS`, seeded) or a sampler."""
    optuna = optuna_module()
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ImportError("sampler='cmaes' needs the cmaes package: pip install cmaes"
                              ) from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))} or an "
                     f"optuna sampler (optuna.samplers.TPESampler(...)), not {sampler!r}")


def make_pruner(pruner: Any) -> Any:
    """An Optuna pruner from a short name (:data:`PRUNERS`), None, or a pruner."""
    optuna = optuna_module()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    named = {"hyperband": optuna.pruners.HyperbandPruner,
             "median": optuna.pruners.MedianPruner,
             "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
             "none": optuna.pruners.NopPruner}
    if pruner is None or pruner in named:
        return named[pruner or "none"]()
    raise ValueError(f"pruner must be one of {', '.join(map(repr, PRUNERS))}, None or an "
                     f"optuna pruner (optuna.pruners.HyperbandPruner()), not {pruner!r}")


def distributions(space: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The space as Optuna distributions, and its constants: ``(distributions, fixed)``."""
    optuna = optuna_module()
    d = optuna.distributions
    found: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Uniform):
            found[key] = d.FloatDistribution(value.low, value.high)
        elif isinstance(value, LogUniform):
            found[key] = d.FloatDistribution(value.low, value.high, log=True)
        elif isinstance(value, IntUniform):
            found[key] = d.IntDistribution(value.low, value.high)
        elif isinstance(value, Choice):
            bad = [o for o in value.options if o is not None
                   and not isinstance(o, (bool, int, float, str))]
            if bad:
                raise ValueError(f"choice options of {key!r} must be numbers, strings, bools "
                                 f"or None for an adaptive sweep (Optuna stores them), not "
                                 f"{bad[0]!r}; choose among names and look them up in the "
                                 f"trial function")
            found[key] = d.CategoricalDistribution(value.options)
        elif isinstance(value, d.BaseDistribution):
            found[key] = value
        else:
            fixed[key] = value
    if not found:
        raise ValueError("an adaptive sweep needs at least one distribution in space= "
                         "(htc.uniform, htc.loguniform, htc.randint, htc.choice)")
    return found, fixed


def journal_storage(path: Path) -> Any:
    """Optuna's journal storage on ``path`` (refused when it is a link)."""
    optuna = optuna_module()
    if path.is_symlink():
        raise folder_files.UnsafeEntry(f"{path} is a symbolic link, not the study's journal")
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
