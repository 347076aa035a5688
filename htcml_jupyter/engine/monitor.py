"""One thread per process follows every live map handle and what watches it.

Each :class:`~htcml_jupyter.engine.mapping.Map` registers itself with the process's
:data:`MONITOR` when it is built, weakly: a handle that is garbage collected (or closed)
leaves.  The monitor's one thread refreshes each handle on its own interval, adaptive:
:data:`QUICK` seconds after a refresh that saw a change (jobs starting, finishing), then
longer and longer while nothing changes, up to :data:`SLOW` (:data:`IDLE` for a handle
nothing watches).  A panel (or anything else) follows a handle with :meth:`Monitor.watch`:
its callback runs on the monitor thread after each refresh of that handle, and the watch
ends when the callback returns False or :meth:`Watch.stop` is called.  The thread ends
when no handle is registered (and starts again with the next one), and for good at the
interpreter's exit; a forked child starts with an empty monitor.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("htcml_jupyter")

#: Seconds between two refreshes of a handle whose jobs are changing.
QUICK = 0.5
#: At most this many seconds between two refreshes of a watched handle.
SLOW = 2.0
#: At most this many seconds between two refreshes of a handle nothing watches.
IDLE = 10.0
#: How much longer each quiet refresh makes the next wait.
BACKOFF = 1.5
#: The monitor thread's name (one per process).
THREAD_NAME = "htcml-monitor"


class Followed(Protocol):
    """What the monitor needs of a handle."""

    def refresh(self) -> bool: ...


#: A watcher's callback: called with whether the refresh saw a change (True after a
#: refresh that raised, so the watcher looks for itself); False ends the watch.
Callback = Callable[[bool], "bool | None"]


class Watch:
    """One watcher of one handle (returned by :meth:`Monitor.watch`)."""

    def __init__(self, monitor: Monitor, key: int, callback: Callback, interval: float):
        self.monitor = monitor
        self.key = key
        self.callback = callback
        #: The quickest this watcher wants the handle refreshed (seconds).
        self.interval = interval
        self._active = True

    @property
    def active(self) -> bool:
        """True until the callback returned False or :meth:`stop` was called."""
        return self._active

    def stop(self) -> None:
        """End the watch (the handle stays registered while it lives)."""
        self.monitor._end(self)


@dataclass
class _Entry:
    ref: weakref.ref[Followed]
    due: float
    interval: float = QUICK
    watches: list[Watch] = field(default_factory=list)

    def quick(self) -> float:
        return min([QUICK, *(w.interval for w in self.watches)])

    def slow(self) -> float:
        return max(self.quick(), SLOW if self.watches else IDLE)


class Monitor:
    """Follows registered handles from one background thread (see the module)."""

    def __init__(self) -> None:
        #: Refreshes done so far (for tests and figures).
        self.refreshes = 0
        self._reset()

    def _reset(self) -> None:
        """Empty, with no thread (also in a forked child: the parent's thread and lock
        state do not come along)."""
        self._cond = threading.Condition(threading.Lock())
        self._entries: dict[int, _Entry] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------ registering
    def register(self, handle: Followed) -> None:
        """Follow ``handle`` while it lives (weakly); its first refresh comes after
        :data:`QUICK` seconds."""
        key = id(handle)
        with self._cond:  # a dead handle's entry is dropped by the thread's next pass
            if key not in self._entries or self._entries[key].ref() is not handle:
                self._entries[key] = _Entry(weakref.ref(handle), time.monotonic() + QUICK)
            self._start()

    def unregister(self, handle: Followed) -> None:
        """Stop following ``handle`` (its watches end too)."""
        with self._cond:
            entry = self._entries.pop(id(handle), None)
        if entry is not None:
            for w in entry.watches:
                w._active = False

    def watch(self, handle: Followed, callback: Callback,
              interval: float = QUICK) -> Watch:
        """Call ``callback`` on the monitor thread after each refresh of ``handle``
        (registered if it was not), refreshing it at least every ``interval`` seconds
        while its jobs change; the callback holds whatever it needs strongly."""
        self.register(handle)
        with self._cond:
            entry = self._entries[id(handle)]
            w = Watch(self, id(handle), callback, interval)
            entry.watches.append(w)
            entry.interval, entry.due = entry.quick(), time.monotonic() + interval
            self._cond.notify_all()
        return w

    def wake(self, handle: Followed) -> None:
        """Refresh ``handle`` soon, quickly again (after an action changed its jobs)."""
        with self._cond:
            entry = self._entries.get(id(handle))
            if entry is not None and entry.ref() is handle:
                entry.interval = entry.quick()
                entry.due = time.monotonic()
                self._cond.notify_all()

    def followed(self) -> list[Followed]:
        """The handles followed now."""
        with self._cond:
            refs = [e.ref() for e in self._entries.values()]
        return [h for h in refs if h is not None]

    def watches(self, handle: Followed) -> list[Watch]:
        """The active watches of ``handle``."""
        with self._cond:
            entry = self._entries.get(id(handle))
            return list(entry.watches) if entry is not None else []

    @property
    def thread(self) -> threading.Thread | None:
        """The monitor thread, while it runs."""
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread for good (at the interpreter's exit: no refresh may still run
        inside the bindings while the process tears them down)."""
        with self._cond:
            self._stopped = True
            for entry in self._entries.values():
                for w in entry.watches:
                    w._active = False
            self._entries.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _end(self, w: Watch) -> None:
        with self._cond:
            w._active = False
            entry = self._entries.get(w.key)
            if entry is not None and w in entry.watches:
                entry.watches.remove(w)

    # ------------------------------------------------------------ the thread
    def _start(self) -> None:  # under the condition
        if self._stopped:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                for key in [k for k, e in self._entries.items() if e.ref() is None]:
                    del self._entries[key]
                if not self._entries:
                    self._thread = None
                    return
                now = time.monotonic()
                due = [(k, e) for k, e in self._entries.items() if e.due <= now]
                if not due:
                    self._cond.wait(min(e.due for e in self._entries.values()) - now)
                    continue
                for _, entry in due:  # not again before this visit is over
                    entry.due = float("inf")
            for _, entry in due:
                self._visit(entry)

    def _visit(self, entry: _Entry) -> None:
        handle = entry.ref()
        if handle is None:
            return
        failed = False
        try:
            changed = handle.refresh()
        except Exception as exc:  # the watchers show it; the thread goes on, more slowly
            log.debug("refreshing a map failed: %s", exc)
            changed = failed = True
        self.refreshes += 1
        del handle  # a dropped handle must not be kept alive by its visit
        with self._cond:
            watches = list(entry.watches)
        for w in watches:
            try:
                keep = w.callback(changed)
            except Exception as exc:  # a watcher's failure ends only its own watch
                log.warning("a watcher of a map failed and stops: %s", exc)
                keep = False
            if keep is False:
                self._end(w)
        with self._cond:
            interval = (entry.quick() if changed and not failed
                        else min(entry.interval * BACKOFF, entry.slow()))
            entry.interval = interval
            if entry.due == float("inf"):  # not woken meanwhile
                entry.due = time.monotonic() + interval


#: The monitor of this process.
MONITOR = Monitor()


os.register_at_fork(after_in_child=MONITOR._reset)
atexit.register(MONITOR.stop)
