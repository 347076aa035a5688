"""Packing from a venv of Debian's own Python, run on execute nodes that share nothing.

Debian's (and Ubuntu's) ``/usr/bin/python3.X`` looks for packages in ``dist-packages``
unless it runs as a venv; a packed environment copies that interpreter and its venv's
``site-packages`` into one prefix, so without a ``pyvenv.cfg`` beside it a job's
``import torch`` fails although torch is in the archive.  This test makes such a venv
(the interpreter of the machine's own Debian, CPU torch and this package inside), maps a
function that imports torch on the isolated pool (private ``/tmp`` per job), and checks
the job ran torch from the packed environment.

The venv is kept under /tmp/htcml-debian-venv between runs (building it installs
torch: about two minutes the first time).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python{}.{}".format(*sys.version_info[:2]))
# under /tmp: the isolated pool's submit side sees it there, as an access point sees the
# venvs in its users' homes (the job-side files and cloudpickle are sent from it)
VENV = Path(os.environ.get("HTCML_DEBIAN_VENV", "/tmp/htcml-debian-venv"))
TORCH = "torch==2.13.0"  # the CPU build the test machines carry

pytestmark = [
    pytest.mark.pool,
    pytest.mark.skipif(not SYSTEM_PYTHON.exists() or not Path("/etc/debian_version").exists(),
                       reason=f"needs Debian's own {SYSTEM_PYTHON}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated pool needs root"),
]

SCRIPT = textwrap.dedent("""
    import sys
    import htcml_jupyter as htc

    def torch_here(x):
        import torch
        return x, torch.__version__, torch.__file__, sys.prefix, float(torch.ones(3).sum())

    m = htc.map(torch_here, [1], pool="isolated", environment="pack", root=sys.argv[1],
                request_memory="2GB")
    try:
        value = m.results(timeout=900)[0]
    finally:
        m.cancel()
    print("RESULT", repr(value))
    print("ENV", repr({k: m.environment.get(k) for k in ("size", "files", "route",
                                                          "job_start_seconds")}))
""")


def _venv() -> Path:
    """A venv of Debian's Python with this package and CPU torch (made once)."""
    python = VENV / "bin" / "python"
    ready = VENV / ".htcml-ready"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    if not (ready.exists() and python.exists()):
        subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", "--clear",
                        str(VENV)], check=True, timeout=120)
        subprocess.run([*pip, TORCH], check=True, timeout=1200)
        ready.write_text("")
    # this checkout, editable (its job-side files are where the pool's submit side reads)
    subprocess.run([*pip, "-e", str(REPO)], check=True, timeout=1200)
    return python


def test_a_debian_python_venv_packs_and_imports_torch_in_a_job(iso_root: Path) -> None:
    python = _venv()
    assert subprocess.run([str(python), "-c", "import site, sys; "
                           "assert sys.base_prefix == '/usr', sys.base_prefix; "
                           "import torch"], timeout=120).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HTCML_HOME"] = str(iso_root / "debian-home")  # the archive: seen by the submit side
    proc = subprocess.run([str(python), "-c", SCRIPT, str(iso_root / "debian-maps")],
                          capture_output=True, text=True, timeout=2000, env=env, cwd="/")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    x, version, torch_file, prefix, total = ast.literal_eval(result[len("RESULT "):])
    assert (x, total) == (1, 3.0) and version.startswith("2.13.0")
    assert prefix.endswith("htcml_env/venv")  # the packed interpreter ran it, not /usr
    assert torch_file.startswith(prefix) and "/site-packages/torch/" in torch_file
