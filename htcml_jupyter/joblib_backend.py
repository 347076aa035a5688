"""The ``"htcondor"`` joblib backend: ``Parallel`` and scikit-learn's ``n_jobs`` on a pool.

>>> import joblib
>>> import htcml_jupyter as htc
>>> htc.register_joblib()
>>> with joblib.parallel_config(backend="htcondor", request_memory="2GB"):
...     GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

Every task of a ``Parallel`` call is dispatched at once and sent through an
:class:`~htcml_jupyter.executor.Executor` with ``chunksize="auto"``: the tasks go out as
one map whose items are packed so that each slot gets about one job, so hundreds of tiny
fits are a few jobs.  ``n_jobs=-1`` is how many jobs of the requested size the pool can
run at once.  A task's exception comes back as its own type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from joblib import register_parallel_backend
from joblib.parallel import ParallelBackendBase

if TYPE_CHECKING:  # loaded when a Parallel call starts: registering stays cheap
    from .executor import Executor, HTCFuture

#: The name the backend is registered under.
NAME = "htcondor"


def _batch_caller() -> Callable[[Callable[[], Any]], Any]:
    def run_batch(batch: Callable[[], Any]) -> Any:
        return batch()

    return run_batch


#: Calls one of joblib's task batches in the job; made in a function so cloudpickle sends
#: it by value (a job needs joblib, not this package).
run_batch = _batch_caller()


def _pickled_caller() -> Callable[[bytes], Any]:
    def run_pickled_batch(data: bytes) -> Any:
        import pickle

        return pickle.loads(data)()

    return run_pickled_batch


#: Calls a batch pickled here with its functions' own modules inside.
run_pickled_batch = _pickled_caller()


def batch_payload(batch: Callable[[], Any]) -> bytes | None:
    """``batch`` pickled with the modules of its functions that are the user's own files
    (not installed, so absent on the execute side) inside it; None when it has none."""
    import cloudpickle

    from .engine.payload import _by_value_module, _pickled_by_value

    own = {_by_value_module(task[0]) for task in getattr(batch, "items", ())
           if isinstance(task, tuple) and task and callable(task[0])}
    own.discard(None)
    if not own:
        return None
    with _pickled_by_value(*own):
        return bytes(cloudpickle.dumps(batch))


class HTCondorBackend(ParallelBackendBase):
    """A joblib backend whose tasks run as HTCondor jobs.

    Parameters
    ----------
    pool, backend, root, window
        As for :class:`~htcml_jupyter.executor.Executor`.
    **options
        Resources and policy for the jobs, as for :func:`htcml_jupyter.map`
        (``request_memory="2GB"``...); checked when the backend is made.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    default_n_jobs = -1

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, *, pool: str | None = None,
                 backend: str | None = None, root: Any = None, window: float = 0.2,
                 **options: Any):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        from .backends.pools import resolve_backend
        from .engine.options import SubmitOptions

        self._submit_options = SubmitOptions.from_kwargs(options)  # unknown names raise
        self._settings: dict[str, Any] = dict(pool=pool, backend=backend, root=root,
                                              window=window, **options)
        self._pool = resolve_backend(pool, backend)
        self._slots: int | None = None
        self._executor: Executor | None = None

    @property
    def slots(self) -> int:
        """How many jobs of the requested size the pool can run at once (at least 1)."""
        if self._slots is None:
            self._slots = max(self._pool.capacity(self._submit_options), 1)
        return self._slots

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs=-1`` is the pool's slot count (``-2`` one fewer...); a positive
        number is taken as given."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        if n_jobs is None:
            n_jobs = -1
        if n_jobs < 0:
            return max(self.slots + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        """Start an executor for one ``Parallel`` call, which dispatches every task at
        once (``pre_dispatch="all"``): a job costs seconds of scheduling, so one map of
        all tasks, packed per slot, beats waves of small ones."""
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if parallel is not None:
            parallel.pre_dispatch = "all"
        if self._executor is None:
            self._executor = self._new_executor()
        return n

    def _new_executor(self) -> Executor:
        from .executor import Executor

        return Executor(chunksize="auto", **self._settings)

    def submit(self, func: Callable[[], Any],
               callback: Callable[[Any], None] | None = None) -> HTCFuture:
        """Send one batch of tasks; ``callback`` runs when its job has finished."""
        if self._executor is None:
            self._executor = self._new_executor()
        data = batch_payload(func)
        future = (self._executor.submit(run_batch, func) if data is None else
                  self._executor.submit(run_pickled_batch, data))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: HTCFuture) -> Any:
        """The batch's results; raises a task's exception (its own type)."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """After a task failed: remove the jobs still waiting, leave running ones."""
        self.terminate(cancel=True)
        if ensure_ready:
            self._executor = self._new_executor()

    def terminate(self, cancel: bool = False) -> None:
        """End the ``Parallel`` call's executor (jobs left waiting are removed only when
        ``cancel``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=cancel)
            self._executor = None


def register_joblib() -> None:
    """Register the ``"htcondor"`` joblib backend (``import htcml_jupyter.joblib_backend``
    does too; so does ``import htcml_jupyter`` when joblib is already imported)::

        with joblib.parallel_config(backend="htcondor", request_memory="2GB"):
            GridSearchCV(..., n_jobs=-1).fit(X, y)
    """
    register_parallel_backend(NAME, HTCondorBackend)


register_joblib()
