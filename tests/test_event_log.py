"""The job-event-log reader and the transition table, from logs recorded on the pool
(``tests/recorded/events/``, see its README): no pool needed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from htcml_jupyter.backends import condor_events
from htcml_jupyter.backends.condor_events import CondorEventReader
from htcml_jupyter.engine.reports import ReportBook
from htcml_jupyter.engine.state import (
    TRANSITIONS,
    EventKind,
    TaskEvent,
    TaskPhase,
    TaskStatus,
    TaskTable,
)
from htcml_jupyter.engine.store import MapStore

RECORDED = Path(__file__).parent / "recorded" / "events"
SCENARIOS = sorted(p.name for p in RECORDED.iterdir() if (p / "logs").is_dir())
K = EventKind
P = TaskPhase


def recorded(name: str, tmp_path: Path) -> MapStore:
    """A copy of a recorded map folder (its log may then grow, or be cut)."""
    shutil.copytree(RECORDED / name, tmp_path / name)
    return MapStore(tmp_path / name)


def table_of(store: MapStore) -> TaskTable:
    table = TaskTable()
    for task, items in store.tasks():
        table.add_task(task, items)
    return table


def read_all(store: MapStore) -> tuple[list[TaskEvent], TaskTable]:
    """Every event of the log read at once, and the task table they leave."""
    reader = CondorEventReader(store)
    events = reader.read()
    assert reader.read() == []
    reader.close()
    table = table_of(store)
    for event in events:
        table.apply(event)
    return events, table


def kinds(events: list[TaskEvent], task: int) -> list[EventKind]:
    return [e.kind for e in events if e.task == task]


def phases(events: list[TaskEvent], store: MapStore, task: int) -> list[TaskPhase]:
    """The task's phase after each of its events."""
    table, out = table_of(store), []
    for event in events:
        table.apply(event)
        if event.task == task:
            out.append(table.tasks[task].phase)
    return out


def clusters(store: MapStore) -> list[int]:
    return [int(s["cluster"]) for s in store.submissions()]


# ------------------------------------------------------------------ each recorded log
def test_submit_execute_reports_and_exit_codes(tmp_path: Path) -> None:
    store = recorded("basic", tmp_path)
    events, table = read_all(store)
    (cluster,) = clusters(store)
    for task in range(3):
        assert kinds(events, task) == [K.SUBMITTED, K.STARTED, K.REPORTED, K.FINISHED]
        assert phases(events, store, task) == [P.IDLE, P.RUNNING, P.RUNNING, P.FINISHED]
        status = table.tasks[task]
        assert status.job_id == f"{cluster}.{task}"
        assert status.host == "vm"
        assert (status.starts, status.evictions) == (1, 0)
        assert 0 < (status.submitted or 0) <= (status.started or 0) <= (status.finished or 0)
    assert {t: s.exit_code for t, s in table.tasks.items()} == {0: 0, 1: 0, 2: 3}
    reports = {e.task: e.detail["records"] for e in events if e.kind is K.REPORTED}
    for task, records in reports.items():
        assert [(r["i"], r["s"], r["m"]) for r in records] == [
            (task, 0, {"loss": 1.5}), (task, 1, {"loss": 0.25})]
    usage = {e.task: e.detail["usage"] for e in events if e.kind is K.FINISHED}
    assert usage[2] == {
        "cpus_requested": 1.0, "cpus_allocated": 1.0, "memory_requested_mb": 1024.0,
        "memory_allocated_mb": 1024.0, "memory_mb": 34.0, "disk_requested_mb": 1024.0,
        "disk_allocated_mb": 1025.0, "disk_mb": 230 / 1024, "cpu_seconds": 0.0}
    assert [usage[t]["memory_mb"] for t in range(3)] == [12.0, 5.0, 34.0]


def test_eviction_runs_again(tmp_path: Path) -> None:
    store = recorded("evict", tmp_path)
    events, table = read_all(store)
    assert kinds(events, 0) == [K.SUBMITTED, K.STARTED, K.EVICTED, K.STARTED, K.FINISHED]
    assert phases(events, store, 0) == [P.IDLE, P.RUNNING, P.IDLE, P.RUNNING, P.FINISHED]
    status = table.tasks[0]
    assert (status.starts, status.evictions, status.exit_code) == (2, 1, 0)
    assert status.job_id == f"{clusters(store)[0]}.0"


def test_hold_by_the_shadow_then_release(tmp_path: Path) -> None:
    store = recorded("hold_input", tmp_path)
    events = CondorEventReader(store).read()
    assert kinds(events, 0) == [K.SUBMITTED, K.EVICTED, K.HELD, K.RELEASED, K.STARTED,
                                K.FINISHED]
    assert phases(events, store, 0) == [P.IDLE, P.IDLE, P.HELD, P.IDLE, P.RUNNING,
                                        P.FINISHED]
    held = next(e for e in events if e.kind is K.HELD)
    assert held.detail["code"] == 13
    assert held.detail["reason"].startswith("Transfer input files failure at access point")
    assert re.search(r"/data\.txt: \(errno 2\) No such file", held.detail["reason"])
    table = table_of(store)
    for event in events[:3]:
        table.apply(event)
    assert (table.tasks[0].hold_reason, table.tasks[0].hold_code) == (
        held.detail["reason"], 13)
    for event in events[3:]:
        table.apply(event)
    status = table.tasks[0]
    assert (status.hold_reason, status.hold_code) == (None, None)
    # the evict event came from a shadow that failed before the job started
    assert (status.starts, status.evictions, status.exit_code) == (1, 0, 0)


def test_holds_by_hand_release_and_a_retry_in_a_second_cluster(tmp_path: Path) -> None:
    store = recorded("hold_release", tmp_path)
    events, table = read_all(store)
    first, second = clusters(store)
    assert kinds(events, 0) == [K.SUBMITTED, K.STARTED, K.EVICTED, K.HELD, K.RELEASED,
                                K.STARTED, K.FINISHED]
    assert kinds(events, 1) == [K.SUBMITTED, K.STARTED, K.EVICTED, K.HELD, K.RELEASED,
                                K.STARTED, K.EVICTED, K.HELD, K.REMOVED]
    assert phases(events, store, 1)[-2:] == [P.HELD, P.REMOVED]
    assert kinds(events, 2) == [K.SUBMITTED, K.STARTED, K.FINISHED]
    holds = [e.detail for e in events if e.kind is K.HELD]
    assert [(d["code"], d["reason"]) for d in holds] == [(1, "held")] * 3  # no reason logged
    assert [table.tasks[t].job_id for t in range(3)] == [f"{first}.0", f"{first}.1",
                                                         f"{second}.0"]
    assert [table.tasks[t].phase for t in range(3)] == [P.FINISHED, P.REMOVED, P.FINISHED]
    assert [table.tasks[t].evictions for t in range(3)] == [1, 2, 0]
    assert table.item_task[0] == 0 and table.item_task[1] == 2  # the retry holds item 1


def test_removed_while_running_and_while_idle(tmp_path: Path) -> None:
    store = recorded("abort", tmp_path)
    events, table = read_all(store)
    assert kinds(events, 0) == [K.SUBMITTED, K.STARTED, K.EVICTED, K.REMOVED]
    status = table.tasks[0]
    assert (status.phase, status.starts, status.evictions) == (P.REMOVED, 1, 0)
    assert status.removed_reason == "removed" and status.finished is not None
    events, table = read_all(recorded("abort_idle", tmp_path))
    assert kinds(events, 0) == [K.SUBMITTED, K.REMOVED]
    assert (table.tasks[0].phase, table.tasks[0].starts) == (P.REMOVED, 0)


def test_cluster_removed_before_its_jobs_materialized(tmp_path: Path) -> None:
    store = recorded("cluster_remove", tmp_path)
    events, table = read_all(store)
    (cluster,) = clusters(store)
    assert kinds(events, 0) == [K.SUBMITTED, K.REMOVED, K.REMOVED]
    for task in (1, 2):
        assert [(e.kind, e.detail) for e in events if e.task == task] == [
            (K.REMOVED, {"reason": "its cluster was removed"})]
        assert table.tasks[task].job_id is None
        assert table.tasks[task].removed_reason == "its cluster was removed"
    assert table.tasks[0].job_id == f"{cluster}.0"
    assert {s.phase for s in table.tasks.values()} == {P.REMOVED}


def test_self_checkpointing_job_keeps_running_between_spools(tmp_path: Path) -> None:
    store = recorded("checkpoint", tmp_path)
    events, table = read_all(store)
    assert kinds(events, 0) == [K.SUBMITTED, K.STARTED] + [K.REPORTED] * 6 + [K.FINISHED]
    notes = [r for e in events if e.kind is K.REPORTED for r in e.detail["records"]]
    assert [(k, r[k]) for r in notes for k in ("saved", "restored") if k in r] == [
        ("saved", 0), ("restored", 0), ("saved", 1), ("restored", 1), ("saved", 2),
        ("restored", 2)]
    status = table.tasks[0]
    assert (status.starts, status.evictions, status.exit_code) == (1, 0, 0)
    book = ReportBook()
    for event in events:
        if event.kind is K.REPORTED:
            book.add(event.detail["records"], 0, status.evictions)
    assert book.checkpoint_summary(0, status.evictions) == {
        "saved": 2, "restored": [0, 1, 2], "resumed": [], "evictions": 0}


# ------------------------------------------------------------------ a log that grows
def _grow(store: MapStore, full: bytes, cuts: list[int]) -> list[TaskEvent]:
    """Read the log as it grows to each cut in turn, then to its end."""
    log = store.event_log
    log.write_bytes(b"")
    reader = CondorEventReader(store)
    out: list[TaskEvent] = []
    for cut in [*cuts, len(full)]:
        with open(log, "ab") as f:
            f.write(full[log.stat().st_size:cut])
        out += reader.read()
        out += reader.read()
    reader.close()
    return out


@pytest.mark.parametrize("name", [s for s in SCENARIOS if s != "truncated"])
def test_reading_in_two_halves_is_reading_once(name: str, tmp_path: Path) -> None:
    store = recorded(name, tmp_path)
    once, _ = read_all(store)
    full = store.event_log.read_bytes()
    for cut in (len(full) // 2, full.index(b"</c>") + 3, full.rindex(b"<c>") + 1):
        assert _grow(store, full, [cut]) == once, f"cut at byte {cut}"


def test_an_event_half_written_is_read_once_whole(tmp_path: Path) -> None:
    """Cut anywhere (every 23rd byte, and every byte around the spots that once aborted
    the process: an empty list ``<l></l>``), the log read as it grows gives the same
    events as read at once."""
    store = recorded("basic", tmp_path)
    once, _ = read_all(store)
    full = store.event_log.read_bytes()
    cuts = set(range(0, len(full), 23))
    for m in re.finditer(rb"<l></l>", full):
        cuts |= set(range(m.start() - 2, m.end() + 2))
    for cut in sorted(cuts):
        assert _grow(store, full, [cut]) == once, f"cut at byte {cut}"
    assert _grow(store, full, sorted(cuts)) == once


def test_truncated_copy_neither_loses_nor_misreads_its_last_event(tmp_path: Path) -> None:
    store = recorded("truncated", tmp_path)
    once, _ = read_all(recorded("basic", tmp_path / "whole"))
    reader = CondorEventReader(store)
    before = reader.read() + reader.read()
    assert not [e for e in before if e.task == 2 and e.kind is K.FINISHED]
    assert before == once[:len(before)]
    full = (RECORDED / "basic" / "logs" / "events.log").read_bytes()
    with open(store.event_log, "ab") as f:
        f.write(full[store.event_log.stat().st_size:])
    after = reader.read()
    assert before + after == once
    finished = [e for e in after if e.task == 2 and e.kind is K.FINISHED]
    assert len(finished) == 1 and finished[0].detail["exit_code"] == 3
    assert finished[0].detail["usage"]["memory_mb"] == 34.0
    assert not reader.damaged


def test_log_cut_for_good_gives_its_whole_events(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(condor_events, "CUT_AFTER", 0.0)
    store = recorded("truncated", tmp_path)
    once, _ = read_all(recorded("basic", tmp_path / "whole"))
    reader = CondorEventReader(store)
    assert reader.read() == []  # perhaps the shadow is still writing
    cut = reader.read()  # still cut: the whole events before the cut
    assert cut and cut == once[:len(cut)]
    assert reader.damaged
    assert kinds(cut, 2) == [K.SUBMITTED, K.STARTED, K.REPORTED]  # nothing misread
    full = (RECORDED / "basic" / "logs" / "events.log").read_bytes()
    with open(store.event_log, "ab") as f:  # the writer was only slow
        f.write(full[store.event_log.stat().st_size:])
    assert cut + reader.read() == once


# ------------------------------------------------------------------ events skipped
def test_unknown_and_foreign_events_are_skipped(tmp_path: Path) -> None:
    store = recorded("basic", tmp_path)
    once, _ = read_all(store)
    full = store.event_log.read_bytes()
    (cluster,) = clusters(store)
    first = full.index(b"</c>\n") + 5
    update = next(re.finditer(rb"<c>\n(?:(?!</c>).)*AttributeUpdateEvent.*?</c>\n", full, re.S))
    submit = full[:first].replace(b"<s>task 0</s>", b"<s>a note</s>")
    number = b'"EventTypeNumber"><i>0<'
    extra = (submit.replace(b"SubmitEvent", b"GenericEvent").replace(
                 number, b'"EventTypeNumber"><i>8<')
             + submit.replace(b"SubmitEvent", b"EventOfAFutureRelease").replace(
                 number, b'"EventTypeNumber"><i>250<')  # unknown to the bindings
             + update.group().replace(b"HtcmlReport", b"SomeoneElsesAttribute")
             + full[:first].replace(b"<i>%d</i>" % cluster, b"<i>%d</i>" % (cluster + 999)))
    store.event_log.write_bytes(full[:first] + extra + full[first:])
    reader = CondorEventReader(store)
    assert reader.read() == once and not reader.damaged


def test_events_that_change_nothing_are_not_passed_on(tmp_path: Path) -> None:
    import htcondor2

    store = recorded("hold_input", tmp_path)
    raw = [e.type.name for e in htcondor2.JobEventLog(str(store.event_log)).events(0)]
    assert {"FILE_TRANSFER", "IMAGE_SIZE", "REMOTE_ERROR"} <= set(raw)
    assert len(CondorEventReader(store).read()) == 6 < len(raw)


# ------------------------------------------------------------------ the transition table
def _status(phase: TaskPhase) -> TaskStatus:
    return TaskStatus(0, [0], phase=phase)


def _event(kind: EventKind, **detail: object) -> TaskEvent:
    return TaskEvent(0, kind, 100.0, dict(detail))


LIVE = [P.IDLE, P.RUNNING, P.HELD]


@pytest.mark.parametrize("phase", LIVE)
@pytest.mark.parametrize("kind", list(TRANSITIONS))
def test_every_transition_of_a_live_job(phase: TaskPhase, kind: EventKind) -> None:
    status = _status(phase)
    changed = status.apply(_event(kind))
    assert status.phase is TRANSITIONS[kind]
    assert changed is (TRANSITIONS[kind] is not phase or kind in (K.STARTED, K.EVICTED))
    assert status.last_event is kind


def test_the_table_covers_every_phase_change() -> None:
    assert TRANSITIONS == {
        K.SUBMITTED: P.IDLE, K.STARTED: P.RUNNING, K.EVICTED: P.IDLE, K.HELD: P.HELD,
        K.RELEASED: P.IDLE, K.FINISHED: P.FINISHED, K.REMOVED: P.REMOVED,
        K.VANISHED: P.REMOVED}
    assert set(K) - set(TRANSITIONS) == {K.REPORTED}


@pytest.mark.parametrize("phase", [P.FINISHED, P.REMOVED])
@pytest.mark.parametrize("kind", list(K))
def test_a_finished_job_stays_where_it_ended(phase: TaskPhase, kind: EventKind) -> None:
    """Stale events (an execute after the terminate, a release after the removal) move
    nothing back."""
    status = _status(phase)
    status.exit_code, status.starts = 0, 1
    assert status.apply(_event(kind, exit_code=5, host="elsewhere")) is False
    assert (status.phase, status.exit_code, status.starts, status.host) == (
        phase, 0, 1, None)


@pytest.mark.parametrize("phase", [*LIVE, P.FINISHED, P.REMOVED])
def test_a_report_changes_no_phase(phase: TaskPhase) -> None:
    status = _status(phase)
    assert status.apply(_event(K.REPORTED, records=[])) is False
    assert status.phase is phase and status.last_event is None
    table = TaskTable()
    table.add_task(0, [0])
    assert table.apply(_event(K.REPORTED)) is False and table.tasks[0].phase is P.IDLE


def test_a_vanished_job_comes_back_when_the_log_knew_more() -> None:
    status = _status(P.RUNNING)
    assert status.apply(_event(K.VANISHED, reason="gone from the queue"))
    assert (status.phase, status.vanished, status.removed_reason) == (
        P.REMOVED, True, "gone from the queue")
    assert status.apply(_event(K.VANISHED)) is False
    assert status.apply(_event(K.FINISHED, exit_code=0))
    assert (status.phase, status.vanished, status.removed_reason, status.exit_code) == (
        P.FINISHED, False, None, 0)
    assert status.apply(_event(K.STARTED)) is False  # now final for good


def test_holds_releases_and_evictions_are_counted_as_they_happened() -> None:
    status = _status(P.IDLE)
    status.apply(_event(K.EVICTED))  # a shadow that failed before the job started
    status.apply(_event(K.HELD, reason="no input", code=13))
    assert (status.phase, status.hold_reason, status.hold_code, status.evictions) == (
        P.HELD, "no input", 13, 0)
    status.apply(_event(K.RELEASED))
    assert (status.phase, status.hold_reason, status.hold_code) == (P.IDLE, None, None)
    status.apply(_event(K.STARTED, host="slot1@a"))
    status.apply(_event(K.EVICTED))
    assert (status.starts, status.evictions, status.host) == (1, 1, "slot1@a")
    status.apply(_event(K.STARTED, host="slot2@b"))
    status.apply(_event(K.EVICTED))
    status.apply(_event(K.REMOVED, reason="rm"))  # removed while running: no eviction
    assert (status.phase, status.starts, status.evictions, status.removed_reason) == (
        P.REMOVED, 2, 1, "rm")


def test_events_of_an_old_cluster_after_a_retry(tmp_path: Path) -> None:
    """The retried item follows its new job; late events of the old job touch only the
    old job, which stays removed."""
    store = recorded("hold_release", tmp_path)
    events, table = read_all(store)
    for kind in (K.RELEASED, K.STARTED, K.FINISHED, K.HELD):
        assert table.apply(TaskEvent(1, kind, 1e10, {"job_id": "1.1"})) is False
    assert table.tasks[1].phase is P.REMOVED and table.tasks[1].job_id != "1.1"
    assert table.item_task[1] == 2 and table.tasks[2].phase is P.FINISHED
    assert table.apply(TaskEvent(99, K.STARTED, 1e10)) is False  # no such job
    # read in another order (the retry's jobs known before the old job's removal): same
    late = table_of(store)
    for event in sorted(events, key=lambda e: e.task != 2):
        late.apply(event)
    assert [late.tasks[t].phase for t in range(3)] == [P.FINISHED, P.REMOVED, P.FINISHED]
