"""How a job starts: the :class:`JobLaunch`, and the one of each kind of environment.

Every kind runs the job side's archive (``jobside.pyz``, which holds the notebook's own
``cloudpickle``): the archive comes first on the job's ``sys.path``, so the function is
always unpickled by the cloudpickle that pickled it, whatever the image or interpreter
has.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..engine.options import SubmitOptions
from ..jobside import runner
from .choice import is_url


@dataclass(frozen=True)
class JobLaunch:
    """How a job starts its runner: the executable, what goes before the runner's own
    arguments, and the files and environment that must come with it."""

    executable: str
    transfer_executable: bool = False
    arguments_prefix: tuple[str, ...] = ()
    input_files: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    #: Files every job of the submission shares (the packed environment), sent once per
    #: execute point as HTCondor's common input files where the schedd supports them.
    common_input_files: tuple[str, ...] = ()
    #: Least scratch disk (KiB) the launch itself needs (an archive and its unpacked
    #: tree); asked for when the map's ``request_disk`` is the default and smaller.
    disk_kb: int | None = None


def default_launch(options: SubmitOptions) -> JobLaunch:
    """The interpreter named by ``python=``; in a container the image's ``python3``;
    otherwise this process's own interpreter (a pool that shares its filesystem)."""
    python = options.python or ("python3" if options.container_image else sys.executable)
    return JobLaunch(executable=python)


def bootstrap_script() -> Path:
    """The job-side script that unpacks an archive and starts its interpreter."""
    return Path(runner.__file__).with_name("bootstrap.sh")


def cloudpickle_folder() -> str:
    """The folder of the notebook's ``cloudpickle`` package (pure Python)."""
    import cloudpickle

    return os.path.dirname(os.path.abspath(cloudpickle.__file__))


def archive_name(archive: str) -> str:
    """The file name an archive (path or URL) gets in the job's folder."""
    if "://" in archive:
        return os.path.basename(urlparse(archive).path) or "environment.tar.gz"
    return os.path.basename(archive)


def launch_for(kind: str, options: SubmitOptions, archive: str | None = None, *,
               common_files: bool = False) -> JobLaunch:
    """How a job starts with an environment of ``kind``.

    Parameters
    ----------
    kind
        ``"shared"`` or ``"container"``: the interpreter of :func:`default_launch`;
        ``"pack"`` and ``"archive"``: ``bootstrap.sh``, with ``archive`` (a path HTCondor
        transfers, or a URL its transfer plugins fetch) as one of the job's input files,
        so it is counted in the job's transfer statistics and resumable like any input.
    options
        The map's submit options.
    archive
        The archive, for ``"pack"`` and ``"archive"``.
    common_files
        Send the archive as a common input file (HTCondor 25.14 and later schedds): an
        execute point receives it once for all the jobs of the map it runs.
    """
    if kind in ("shared", "container"):
        return default_launch(options)
    if kind not in ("pack", "archive") or not archive:
        raise ValueError(f"no launch for an environment of kind {kind!r} "
                         f"(archive {archive!r})")
    if not is_url(archive):
        archive = os.path.abspath(archive)
    return JobLaunch(executable=str(bootstrap_script()), transfer_executable=True,
                     arguments_prefix=(archive_name(archive),),
                     input_files=() if common_files else (archive,),
                     common_input_files=(archive,) if common_files else ())


def supports_common_files(version: str) -> bool:
    """Whether a schedd of ``version`` (``"$CondorVersion: 25.14.1 ..."`` or
    ``"25.14.1"``) sends common input files once per execute point."""
    import re

    match = re.search(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= (25, 14)
