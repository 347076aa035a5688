"""``htc.Executor``: the :mod:`concurrent.futures` interface over HTCondor maps.

Calls submitted within a short window (of the same function) go out as one map, so one
HTCondor cluster, instead of one per call.  One background thread per executor sends
those batches and resolves each call's future from its map's job event log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor as BaseExecutor
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine.errors import HTCMLError, RemoteError
from .engine.options import SubmitOptions
from .engine.state import ItemState, TaskPhase
from .paths import default_map_root

if TYPE_CHECKING:
    from .backends.protocol import Backend
    from .engine.mapping import Chunksize, Map

#: Calls of one function submitted within this many seconds share one cluster.
WINDOW = 0.2
#: How often the background thread reads the event logs of maps with open futures.
POLL = 0.2


def calls_of(function: Callable[..., Any]) -> Callable[[tuple[tuple[Any, ...], dict[str, Any]]],
                                                      Any]:
    """``function`` taking one ``(args, kwargs)`` item: what each job's items call.

    A closure, so cloudpickle sends it by value (the execute side needs nothing of this
    package); it names the function's module, so a function from the user's own file
    travels by value too.
    """
    def call(item: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
        args, kwargs = item
        return function(*args, **kwargs)

    call.__name__ = getattr(function, "__name__", "call")
    call.__module__ = getattr(function, "__module__", None) or call.__module__
    return call


def local_exception(error: HTCMLError) -> BaseException:
    """The exception a future raises for ``error``: the remote exception itself when it
    unpickles here (its cause is the :class:`RemoteError` with the remote traceback),
    else ``error`` (a :class:`RemoteError`, :class:`ItemHeld` or :class:`ItemRemoved`)."""
    if isinstance(error, RemoteError):
        original = error.original()
        if original is not None:
            original.__cause__ = error
            return original
    return error


class HTCFuture(Future[Any]):
    """The future of one call run in an HTCondor job.

    ``result()`` raises the remote exception (its own type where it unpickles here,
    else :class:`RemoteError`); ``cancel()`` removes the call's job while it waits in
    the queue, and returns False once the job runs or finished.  ``map`` and ``item``
    name the call once its batch is submitted.
    """

    def __init__(self, executor: Executor):
        super().__init__()
        self._executor = executor
        self._withdrawn = False
        self._unsent = False  # its batch could not be submitted
        #: The map that holds this call (None until its batch is submitted).
        self.map: Map | None = None
        #: The call's item index in :attr:`map`.
        self.item: int | None = None

    def cancel(self) -> bool:
        """Cancel the call: drop it before its batch is sent, or remove its job while it
        is idle (the job must hold no other live call).  False once it runs."""
        with self._condition:
            if self._state == "PENDING" and not (
                    self._withdrawn or self._executor._withdraw(self)):
                return False
            cancelled = super().cancel()
            if cancelled and self._state == "CANCELLED":
                self.set_running_or_notify_cancel()  # wakes wait() and as_completed()
            return cancelled

    def _mark_running(self) -> None:
        with self._condition:
            if self._state == "PENDING":
                self.set_running_or_notify_cancel()

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)
        except InvalidStateError:  # cancelled meanwhile
            pass

    def __repr__(self) -> str:
        where = f" item {self.item} of {self.map.name!r}" if self.map is not None else ""
        return f"<HTCFuture{where} {self._state.lower()}>"


@dataclass
class _Batch:
    """Calls waiting to go out as one map."""

    function: Callable[..., Any]
    opened: float
    chunksize: Chunksize
    calls: list[tuple[tuple[tuple[Any, ...], dict[str, Any]], HTCFuture]] = field(
        default_factory=list)


@dataclass
class _Tracked:
    """A submitted map and its calls' futures that are not resolved yet."""

    map: Map
    open: dict[int, HTCFuture]


class Executor(BaseExecutor):
    """A :class:`concurrent.futures.Executor` whose calls run as HTCondor jobs.

    >>> with htc.Executor(request_memory="1GB") as ex:
    ...     futures = [ex.submit(score, x, scale=3) for x in range(100)]  # one cluster
    ...     [f.result() for f in concurrent.futures.as_completed(futures)]

    Parameters
    ----------
    pool, backend, root
        Where the maps go, as for :func:`htcml_jupyter.map`; the pool is chosen once,
        here, and used by every call.
    window
        Calls of one function submitted within this many seconds of the first go out
        as one map (one HTCondor cluster).
    chunksize
        Calls per job for submitted calls (``"auto"`` packs a large batch so each slot
        gets about one job).  A job holding several calls is only cancelled as a whole.
    **options
        Resources and policy as for :func:`htcml_jupyter.map` (``request_memory=``,
        ``request_gpus=``...); checked now, naming the valid ones when one is unknown.
    """

    def __init__(self, *, pool: str | None = None, backend: str | None = None,
                 root: str | Path | None = None, window: float = WINDOW,
                 chunksize: Chunksize = 1, **options: Any):
        from .backends.pools import resolve_backend

        SubmitOptions.from_kwargs(options)  # raises OptionError listing the valid options
        if chunksize != "auto" and (isinstance(chunksize, bool) or
                                    not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a whole number >= 1 or 'auto', not "
                             f"{chunksize!r}")
        if not window >= 0:
            raise ValueError(f"window must be a number of seconds >= 0, not {window!r}")
        self.options = dict(options)
        self.window = float(window)
        self.chunksize: Chunksize = chunksize
        self.root = Path(root) if root is not None else default_map_root()
        self.backend: Backend = resolve_backend(pool, backend)
        self._lock = threading.Condition()
        self._pending: dict[object, _Batch] = {}
        self._tracked: list[_Tracked] = []
        self._maps: list[Map] = []
        self._shutdown = False
        self._thread: threading.Thread | None = None

    @property
    def maps(self) -> list[Map]:
        """Every map this executor submitted, oldest first (one per batch of calls)."""
        with self._lock:
            return list(self._maps)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else "open"
        return f"<htc.Executor on {self.backend.description}: {len(self._maps)} maps, {state}>"

    # ------------------------------------------------------------------ submitting
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HTCFuture:
        """Run ``fn(*args, **kwargs)`` in a job; returns its future at once."""
        if not callable(fn):
            raise TypeError(f"submit needs a callable, not {type(fn).__name__}")
        try:  # equal callables share a batch: ``obj.method`` is a new object each time
            key: object = ("callable", fn, hash(fn))
        except TypeError:
            key = ("object", id(fn))
        return self._add(key, fn, [(args, kwargs)], self.chunksize)[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Generator[Any, None, None]:
        """``fn`` over the zipped ``iterables`` as one map, ``chunksize`` calls per job;
        results in order, each as soon as it is there.  Raises the first failed call's
        exception where it comes in order, and ``TimeoutError`` when ``timeout`` seconds
        (from this call) run out.  Unconsumed calls are cancelled when the iterator is
        closed."""
        if not callable(fn):
            raise TypeError(f"map needs a callable, not {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a whole number >= 1, not {chunksize!r}")
        end = None if timeout is None else time.monotonic() + timeout
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (tuple(args), {}) for args in zip(*iterables, strict=False)]
        futures = self._add(object(), fn, calls, chunksize, due=True) if calls else []

        def results() -> Generator[Any, None, None]:
            waiting = list(reversed(futures))
            try:
                while waiting:
                    left = None if end is None else max(end - time.monotonic(), 0.0)
                    yield waiting[-1].result(left)
                    waiting.pop()
            finally:
                self._cancel_many(waiting)

        return results()

    def _add(self, key: object, fn: Callable[..., Any],
             calls: list[tuple[tuple[Any, ...], dict[str, Any]]], chunksize: Chunksize,
             due: bool = False) -> list[HTCFuture]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown()")
            batch = self._pending.get(key)
            if batch is None:
                opened = float("-inf") if due else time.monotonic()
                batch = self._pending[key] = _Batch(fn, opened, chunksize)
            futures = [HTCFuture(self) for _ in calls]
            batch.calls.extend(zip(calls, futures, strict=True))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="htcml-executor")
                self._thread.start()
            self._lock.notify_all()
        return futures

    # ------------------------------------------------------------------ cancelling
    def _withdraw(self, future: HTCFuture) -> bool:
        """Take ``future``'s call back: out of its batch if not sent, else its job out of
        the queue if idle.  Called by ``future.cancel()``."""
        with self._lock:
            for key, batch in list(self._pending.items()):
                kept = [(c, f) for c, f in batch.calls if f is not future]
                if len(kept) < len(batch.calls):
                    batch.calls = kept
                    if not kept:
                        del self._pending[key]
                    return True
            sender = threading.current_thread() is self._thread  # (from a done callback)
            while future.map is None and not future._unsent and not sender:
                self._lock.wait(POLL)  # its batch is going out
            if future.map is None:
                return False  # its batch failed: it gets the batch's error
        return future in self._remove_idle(future.map, [future])

    def _remove_idle(self, m: Map, futures: list[HTCFuture]) -> set[HTCFuture]:
        """Remove the idle jobs of ``m`` whose every open call is among ``futures``;
        returns the futures whose calls were removed."""
        wanted = {f.item: f for f in futures if f.item is not None and not f.done()}
        with self._lock:  # never a future's lock inside this one: cancel() nests them
            tracked = next((t for t in self._tracked if t.map is m), None)
            open_calls = dict(tracked.open) if tracked else {}
        live = {i for i, f in open_calls.items() if not f.done()}
        chosen: list[int] = []
        for status in m.tasks():
            if status.phase is not TaskPhase.IDLE:
                continue
            items = set(status.items)
            if items & wanted.keys() and (items & live) <= wanted.keys():
                chosen.extend(sorted(items & wanted.keys()))
        stopped = set(m.abort(chosen, "cancelled")) if chosen else set()
        return {wanted[i] for i in stopped if i in wanted}

    def _cancel_many(self, futures: Iterable[HTCFuture]) -> None:
        """Cancel calls together: a job holding several of them goes as a whole."""
        by_map: dict[int, list[HTCFuture]] = {}
        for f in futures:
            if f.map is None or f.done():
                f.cancel()
            else:
                by_map.setdefault(id(f.map), []).append(f)
        for group in by_map.values():
            assert group[0].map is not None
            for f in self._remove_idle(group[0].map, group):
                f._withdrawn = True
                f.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls.  With ``cancel_futures``, calls not sent yet and calls whose
        jobs are still idle are cancelled (their jobs removed); running ones go on.
        With ``wait``, block until every remaining call is resolved."""
        with self._lock:
            self._shutdown = True
            unsent = [f for b in self._pending.values() for _, f in b.calls]
            sent = [f for t in self._tracked for f in t.open.values()]
            thread = self._thread
            self._lock.notify_all()
        if cancel_futures:
            for f in unsent:
                f.cancel()
            self._cancel_many(sent)
        if wait and thread is not None:
            thread.join()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [k for k, b in self._pending.items()
                       if self._shutdown or now - b.opened >= self.window]
                batches = [self._pending.pop(k) for k in due]
                if (not self._pending and not batches
                        and not any(t.open for t in self._tracked)):
                    self._thread = None  # nothing to do: the next submit starts another
                    return
            for batch in batches:
                self._send(batch)
            for tracked in list(self._tracked):
                self._poll(tracked)
            with self._lock:
                if self._pending:
                    first = min(b.opened for b in self._pending.values())
                    delay = min(max(first + self.window - time.monotonic(), 0.0), POLL)
                else:
                    delay = POLL
                if delay > 0:
                    self._lock.wait(delay)

    def _send(self, batch: _Batch) -> None:
        from .engine.creation import create_map

        if not batch.calls:
            return
        try:
            m = create_map(calls_of(batch.function), [c for c, _ in batch.calls], kwargs=None,
                           backend=self.backend, root=self.root, name=None,
                           chunksize=batch.chunksize, options=self.options)
        except BaseException as exc:  # nothing was queued: every call of the batch fails
            with self._lock:
                for _, f in batch.calls:
                    f._unsent = True
                self._lock.notify_all()
            for _, f in batch.calls:
                f._settle(error=exc)
            return
        with self._lock:
            for item, (_, f) in enumerate(batch.calls):
                f.map, f.item = m, item
            self._maps.append(m)
            self._tracked.append(_Tracked(m, {i: f for i, (_, f) in enumerate(batch.calls)}))
            self._lock.notify_all()  # cancel() may wait for the batch to go out

    def _poll(self, tracked: _Tracked) -> None:
        m = tracked.map
        try:
            m.wait(timeout=0)  # reads new events; asks the queue about jobs gone unseen
            states = m.item_states()
        except HTCMLError:
            return  # the pool is out of reach for now: asked again at the next poll
        for item, f in list(tracked.open.items()):
            state = states[item]
            if state is ItemState.RUNNING:
                f._mark_running()
            if not state.settled and not f.done():
                continue
            if not f.done():
                self._resolve(m, item, f, state)
            with self._lock:
                tracked.open.pop(item, None)
        if not tracked.open:
            with self._lock:
                if tracked in self._tracked:
                    self._tracked.remove(tracked)
            m.close()

    @staticmethod
    def _resolve(m: Map, item: int, future: HTCFuture, state: ItemState) -> None:
        try:
            if state is ItemState.DONE:
                # as Map.as_completed reads it: no item-state pass per item
                value = m.parts.results.value(item)
                future._settle(value)
                return
            error = m.error(item)
        except HTCMLError as exc:  # a result that cannot be unpickled here
            error = exc
        future._settle(error=local_exception(error or HTCMLError(f"item {item} has no result")))
