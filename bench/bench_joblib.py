"""Benchmark: scikit-learn's GridSearchCV with 96 small fits through the "htcondor"
joblib backend on the project's pool, against the baseline of the same search with
``n_jobs=2`` in local processes (loky), in one run.

Reports the wall time of each, their ratio, the jobs the backend used and its clusters,
and checks that both searches found the same best parameters and scores.

Run:  .venv/bin/python bench/bench_joblib.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import htcml_jupyter as htc

#: 8 C values x 4 gamma values x 3 folds = 96 fits.
GRID = {"C": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
        "gamma": [0.0003, 0.001, 0.003, 0.01]}
FOLDS = 3


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    fits = len(GRID["C"]) * len(GRID["gamma"]) * FOLDS

    started = time.perf_counter()
    local = GridSearchCV(SVC(), GRID, cv=FOLDS, n_jobs=2).fit(X, y)
    local_s = time.perf_counter() - started

    root = Path(tempfile.mkdtemp(prefix="htcml-bench-joblib-", dir="/tmp"))
    root.chmod(0o755)
    htc.register_joblib()
    with joblib.parallel_config(backend="htcondor", pool="project", root=root,
                                request_memory="512MB"):
        slots = joblib.effective_n_jobs(-1)
        started = time.perf_counter()
        remote = GridSearchCV(SVC(), GRID, cv=FOLDS, n_jobs=-1).fit(X, y)
        remote_s = time.perf_counter() - started
    maps = [htc.attach(info.name, root=root, watch=False) for info in htc.list_maps(root)]
    jobs = sum(len(m.tasks()) for m in maps)
    clusters = sum(len(m.clusters) for m in maps)
    same = (remote.best_params_ == local.best_params_ and np.allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]))

    print(f"GridSearchCV, {fits} fits of SVC on 600 digits ({FOLDS}-fold)")
    print(f"  local n_jobs=2 (loky):          {local_s:7.1f} s")
    print(f"  htcondor backend, n_jobs=-1:    {remote_s:7.1f} s  "
          f"({slots} slots; {jobs} jobs in {clusters} cluster(s))")
    print(f"  backend / local wall time:      {remote_s / local_s:7.2f}")
    print(f"  fits per job:                   {fits / max(jobs, 1):7.1f}")
    print(f"  same best_params_ and scores:   {same}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
