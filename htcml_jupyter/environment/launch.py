"""The :class:`JobLaunch` of each kind of environment.

Every kind ships the notebook's own ``cloudpickle`` package folder with the job: the
runner's folder comes first on the job's ``sys.path``, so the function is always
unpickled by the cloudpickle that pickled it, whatever the image or interpreter has.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..backends.submit_description import JobLaunch, default_launch
from ..engine.options import SubmitOptions
from ..jobside import runner


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


def launch_for(kind: str, options: SubmitOptions, archive: str | None = None) -> JobLaunch:
    """How a job starts with an environment of ``kind``.

    Parameters
    ----------
    kind
        ``"shared"`` or ``"container"``: the interpreter of :func:`default_launch`;
        ``"pack"``: ``bootstrap.sh``, which fetches the packed ``archive`` through chirp
        when its machine has no unpacked copy; ``"archive"``: ``bootstrap.sh`` with
        ``archive`` (a path, or a URL HTCondor fetches) sent along.
    options
        The map's submit options.
    archive
        The archive, for ``"pack"`` and ``"archive"``.
    """
    pickler = cloudpickle_folder()
    if kind in ("shared", "container"):
        base = default_launch(options)
        return JobLaunch(executable=base.executable,
                         transfer_executable=base.transfer_executable,
                         arguments_prefix=base.arguments_prefix,
                         input_files=(*base.input_files, pickler),
                         environment=dict(base.environment))
    if kind not in ("pack", "archive") or not archive:
        raise ValueError(f"no launch for an environment of kind {kind!r} "
                         f"(archive {archive!r})")
    if kind == "pack":
        # The pack stays on the submit side: a job fetches it through chirp only when its
        # machine holds no unpacked copy yet (bootstrap.sh --fetch), so a warm machine
        # costs no transfer at all.
        return JobLaunch(executable=str(bootstrap_script()), transfer_executable=True,
                         arguments_prefix=("--fetch", os.path.abspath(archive),
                                           archive_name(archive)),
                         input_files=(pickler,))
    return JobLaunch(executable=str(bootstrap_script()), transfer_executable=True,
                     arguments_prefix=(archive_name(archive),),
                     input_files=(archive, pickler))
