"""The "htcondor" joblib backend against the real pool: scikit-learn's n_jobs=-1 as jobs."""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC
from sklearn.utils._param_validation import InvalidParameterError

import htcml_jupyter as htc
from htcml_jupyter.joblib_backend import HTCondorBackend


def cubed(x: int) -> int:
    return x ** 3


def jobs_under(root: Path) -> int:
    """How many jobs the maps under ``root`` used."""
    return sum(len(htc.attach(info.name, root=root, watch=False).tasks())
               for info in htc.list_maps(root))


def test_registered_when_the_package_is_imported_after_joblib_only() -> None:
    check = ("import sys; {first}import htcml_jupyter; from joblib.parallel import "
             "BACKENDS; print('joblib' in sys.modules, 'htcondor' in BACKENDS)")
    after = subprocess.run([sys.executable, "-c", check.format(first="import joblib; ")],
                           capture_output=True, text=True, check=True)
    assert after.stdout.split() == ["True", "True"]
    alone = subprocess.run([sys.executable, "-c", "import sys, htcml_jupyter; "
                            "print('joblib' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert alone.stdout.split() == ["False"]  # joblib is not imported by the package


def test_registered_on_import_and_options_checked() -> None:
    htc.register_joblib()
    assert joblib.parallel.BACKENDS["htcondor"] is HTCondorBackend
    with pytest.raises(htc.OptionError, match="request_memory"):
        HTCondorBackend(request_memroy="2GB")


@pytest.mark.pool
def test_grid_search_matches_local_with_far_fewer_jobs_than_fits(pool_env: str,
                                                                 map_root: Path) -> None:
    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": [0.01, 0.1, 1.0]}
    local = GridSearchCV(SVC(), grid, cv=4, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="htcondor", request_memory="512MB", root=map_root):
        slots = htc.pool_resources().cpus_total
        assert joblib.effective_n_jobs(-1) == slots
        assert joblib.effective_n_jobs(-2) == slots - 1
        remote = GridSearchCV(SVC(), grid, cv=4, n_jobs=-1).fit(X, y)
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"],
                               local.cv_results_["mean_test_score"], rtol=1e-12)
    fits = len(remote.cv_results_["params"]) * 4
    assert fits == 48
    jobs = jobs_under(map_root)
    assert 1 <= jobs <= slots < fits / 4, f"{fits} fits used {jobs} jobs"
    assert len(htc.list_maps(map_root)) == 1  # one cluster


@pytest.mark.pool
def test_errors_keep_their_type_and_own_functions_travel(pool_env: str, map_root: Path) -> None:
    X, y = load_iris(return_X_y=True)
    with joblib.parallel_config(backend="htcondor", request_memory="512MB", root=map_root):
        with pytest.raises(InvalidParameterError, match="C"):
            GridSearchCV(LogisticRegression(), {"C": [-1.0, -2.0]}, cv=2,
                         error_score="raise", n_jobs=-1).fit(X, y)
        with pytest.raises(ZeroDivisionError):
            joblib.Parallel(n_jobs=-1)(joblib.delayed(operator.truediv)(1, b)
                                       for b in (1, 0, 2))
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(operator.truediv)(1, b)
                                          for b in (1, 2, 4)) == [1, 0.5, 0.25]
        # a function of this (not installed) module travels by value
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(cubed)(x)
                                          for x in range(20)) == [x ** 3 for x in range(20)]
