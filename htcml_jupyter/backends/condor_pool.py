"""What an HTCondor pool says about itself, and the job shapes besides a map's cluster.

:class:`~.condor.CondorBackend` answers the environment code (filesystem domains, the
schedd's version) and queues a sweep's watcher (one local-universe job) and a chain's
DAGMan job through these functions, each called under the pool's configuration.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ..engine.store import MapStore
from .bindings import condor_arguments, condor_environment
from .protocol import WatcherJob

#: The job attribute that names the map a watcher job watches.
WATCHER_ATTRIBUTE = "HtcmlWatcherOf"

#: The submit side's filesystem domain (None when unknown) and each execute machine's.
Domains = tuple[str | None, list[str]]

_chdir_lock = threading.Lock()


def pool_domains(htcondor2: Any) -> Domains:
    """The submit side's filesystem domain and the execute machines' ones.

    The schedd's ad in the collector does not carry ``FileSystemDomain``, so the submit
    side's domain is read from the schedd's configuration (``htcondor2.RemoteParam``),
    and from the pool's client configuration when the schedd does not answer.
    """
    collector = htcondor2.Collector()
    startds = collector.query(htcondor2.AdType.Startd,
                              projection=["Machine", "FileSystemDomain"])
    execute = [str(ad["FileSystemDomain"]) for ad in startds if ad.get("FileSystemDomain")]
    submit = _schedd_domain(htcondor2, collector)
    if not submit:
        submit = htcondor2.param.get("FILESYSTEM_DOMAIN")
    return (str(submit) if submit else None), execute


def _schedd_domain(htcondor2: Any, collector: Any) -> str | None:
    """``FileSystemDomain`` of the schedd's ad if it has one, else the schedd's own
    ``FILESYSTEM_DOMAIN`` setting."""
    from .bindings import daemon_restarted

    try:
        located = collector.locate(htcondor2.DaemonType.Schedd)
        ads = collector.query(htcondor2.AdType.Schedd,
                              constraint=f'Name == "{located["Name"]}"',
                              projection=["Name", "FileSystemDomain"])
        for ad in ads:
            if ad.get("FileSystemDomain"):
                return str(ad["FileSystemDomain"])
        value = htcondor2.RemoteParam(located).get("FILESYSTEM_DOMAIN")
        return str(value) if value else None
    except Exception as exc:
        if daemon_restarted(exc):
            raise  # asked again with a new connection (call_with_pool)
        return None


def schedd_version(htcondor2: Any) -> str:
    """The ``CondorVersion`` of the pool's schedd (``"$CondorVersion: 23.9.6 ..."``)."""
    located = htcondor2.Collector().locate(htcondor2.DaemonType.Schedd)
    return str(located.get("CondorVersion", ""))


def dagman_executable(htcondor2: Any) -> str:
    """Where the schedd finds ``condor_dagman``: on this PATH, or in the pool's BIN."""
    found = shutil.which("condor_dagman")
    if found:
        return found
    return f"{htcondor2.param.get('BIN', '/usr/bin')}/condor_dagman"


def submit_dag(htcondor2: Any, schedd: Any, dag_file: Path) -> int:
    """Queue DAGMan for ``dag_file`` on ``schedd``; returns its cluster id.

    ``Submit.from_dag`` follows ``condor_submit_dag``'s rules (paths relative to the
    DAG's folder), so it runs there; the DAGMan job gets no ``CONDOR_CONFIG``, which
    names a file of this process's machine, not the schedd's."""
    folder = dag_file.parent
    dagman = dagman_executable(htcondor2)
    with _chdir_lock:
        here = os.getcwd()
        os.chdir(folder)
        try:
            sub = htcondor2.Submit.from_dag(str(dag_file), {"force": True, "dagman": dagman})
        finally:
            os.chdir(here)
    names = [n for n in str(sub.get("getenv", "")).split(",") if n.strip() != "CONDOR_CONFIG"]
    sub["getenv"] = ",".join(names)
    sub["initialdir"] = str(folder)
    return int(schedd.submit(sub).cluster())


def watcher_description(store: MapStore, job: WatcherJob) -> dict[str, str]:
    """The submit commands of ``job``, the watcher of ``store``'s sweep (a pure
    function): a local-universe job in the map's folder, its output in ``logs/``.

    The job gets only ``job.environment``: not ``CONDOR_CONFIG``, which names a file of
    this process's machine; the watcher uses the configuration of the host that runs it.
    """
    return {
        "universe": "local",
        "executable": job.executable,
        "arguments": condor_arguments(list(job.arguments)),
        "initialdir": str(store.path),
        "output": "logs/watcher.out",
        "error": "logs/watcher.err",
        "log": "logs/watcher.log",
        "environment": condor_environment(job.environment),
        # one that cannot start (no such interpreter on that host) leaves the queue; the
        # kernel's watcher takes over once its record falls silent
        "periodic_remove": "JobStatus == 5",
        "batch_name": f"{store.name}-watcher",
        f"My.{WATCHER_ATTRIBUTE}": f'"{store.name}"',
    }
