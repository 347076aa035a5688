"""The sidebar's server extension in a real Jupyter server, over HTTP.

The server runs as "a user" whose map root is ``$HTCML_HOME/maps``; maps are made in
this process on the project's pool (or in local processes where no pool is needed) and
the endpoints under ``/htcml/`` must list, cancel and retry exactly those maps, with
the server's token and XSRF checks in force.
"""

from __future__ import annotations

import http.cookiejar
import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import htcml_jupyter as htc
from htcml_jupyter.backends.bindings import pool_config
from tests import helpers
from tests.helpers import wait_until
from tests.jupyter_server import JupyterLab

REPO = Path(__file__).resolve().parent.parent

#: Names that are not map names: each must get a 400 that says why, from both actions.
BAD_NAMES = ["..", ".", "../x", "a/../../etc", "/etc/passwd", "a\0b", ".hidden", "-rf",
             "a b", "x" * 101, "ünïcødé", "a;rm -rf /", "~", "$(id)", "a\nb"]


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


def _call(opener: urllib.request.OpenerDirector, url: str, method: str = "GET",
          headers: dict[str, str] | None = None) -> Reply:
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=60) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {"text": text}
    return Reply(status, body)


class Client:
    """Calls the endpoints of one server, authenticated by its token."""

    def __init__(self, lab: JupyterLab):
        self.lab = lab
        self.opener = urllib.request.build_opener()

    def url(self, path: str) -> str:
        return f"{self.lab.url}/htcml/{path}"

    def get(self, path: str = "maps", token: str | None = None) -> Reply:
        token = self.lab.token if token is None else token
        headers = {"Authorization": f"token {token}"} if token else {}
        return _call(self.opener, self.url(path), headers=headers)

    def post(self, name: str, action: str, token: str | None = None) -> Reply:
        token = self.lab.token if token is None else token
        headers = {"Authorization": f"token {token}"} if token else {}
        path = f"maps/{urllib.parse.quote(name, safe='')}/{action}"
        return _call(self.opener, self.url(path), "POST", headers)

    def maps(self) -> dict[str, dict[str, Any]]:
        reply = self.get()
        assert reply.status == 200, reply
        return {m["name"]: m for m in reply.body["maps"]}


def _server(base: Path, env: dict[str, str], args: list[str] | None = None) -> JupyterLab:
    missing = [m for m in ("jupyterlab", "jupyter_server")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the server extension tests need {', '.join(missing)}: "
                    f"run scripts/install-browser", pytrace=False)
    return JupyterLab(base, env={"HTCML_LOCAL_FALLBACK": "0", **env}, args=args)


@pytest.fixture(scope="module")
def home(session_root: Path) -> Path:
    """The server user's HTCML_HOME, under /tmp (the pool's jobs see it)."""
    path = session_root / "server-extension-home"
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    with _server(tmp_path_factory.mktemp("lab"), {"HTCML_HOME": str(home)}) as lab:
        yield lab


@pytest.fixture
def client(server: JupyterLab) -> Client:
    return Client(server)


def _queue(config: str, name: str) -> list[Any]:
    """The jobs of map ``name`` in the pool's queue, except those already removed."""
    with pool_config(config) as htcondor2:
        return list(htcondor2.Schedd().query(
            constraint=f'HtcmlMap == "{name}" && JobStatus != 3',
            projection=["ClusterId", "ProcId", "JobStatus"]))


def _plain(text: str) -> str:
    """``text`` without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_installed_extension_is_enabled() -> None:
    """The editable install makes both halves known to Jupyter, and the committed
    prebuilt extension was built from the sources in labextension/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    servers = subprocess.run([jupyter, "server", "extension", "list"], env=env,
                             capture_output=True, text=True, timeout=120)
    text = _plain(servers.stdout + servers.stderr)
    assert re.search(r"htcml_jupyter\.server\s+enabled", text), text
    assert re.search(r"htcml_jupyter\.server\s+OK", text), text
    labs = subprocess.run([jupyter, "labextension", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    text = _plain(labs.stdout + labs.stderr)
    assert re.search(r"htcml-jupyter-sidebar v\S+ enabled OK \(python, htcml_jupyter\)", text), text
    paths = json.loads(subprocess.run([jupyter, "--paths", "--json"], env=env,
                                      capture_output=True, text=True, timeout=60).stdout)
    installed = next(Path(d) / "labextensions" / "htcml-jupyter-sidebar"
                     for d in paths["data"]
                     if (Path(d) / "labextensions" / "htcml-jupyter-sidebar").is_dir())
    built = REPO / "htcml_jupyter" / "labextension"
    assert (installed / "sources.sha256").read_text() == (built / "sources.sha256").read_text(), \
        f"{installed} is an older build than {built}: run scripts/setup-env"
    assert sorted(p.name for p in (installed / "static").iterdir()) == \
        sorted(p.name for p in (built / "static").iterdir())
    digest = subprocess.run([sys.executable, str(REPO / "labextension" / "sources_digest.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert digest.returncode == 0, digest.stderr


@pytest.mark.pool
def test_lists_maps_and_sweeps_on_the_pool(pool: str, home: Path, client: Client) -> None:
    root = home / "maps"
    m = htc.map(helpers.nap, [600, 600, 600], root=root, pool=pool, chunksize=1)
    sweep = htc.sweep(helpers.scale, grid={"x": [1, 2]}, root=root, pool=pool)
    try:
        listed = client.maps()
        assert client.get().body["root"] == str(root)
        row = listed[m.name]
        assert row["kind"] == "map" and sweep.name in listed
        assert listed[sweep.name]["kind"] == "sweep"
        assert row["function"] == "nap" and row["n_items"] == 3
        assert row["pool"] == m.backend.description
        assert row["created"] == pytest.approx(m.record.created)
        assert 0 <= row["age"] < 300
        assert sum(row["counts"].values()) == 3 and row["running"] is True
        assert row["error"] is None
        # The counts follow the jobs: the sweep's two trials finish.
        wait_until(lambda: client.maps()[sweep.name]["counts"].get("done") == 2,
                   timeout=120, interval=0.5, message="the sweep should finish in the list")
        assert client.maps()[sweep.name]["running"] is False
    finally:
        m.cancel()
        sweep.cancel()


@pytest.mark.pool
def test_cancel_and_retry_act_on_the_schedd(pool: str, home: Path, client: Client) -> None:
    m = htc.map(helpers.nap, [600, 600], root=home / "maps", pool=pool, chunksize=1)
    try:
        wait_until(lambda: len(_queue(pool, m.name)) == 2, timeout=60,
                   message="the map's jobs should be in the queue")
        reply = client.post(m.name, "cancel")
        assert reply.status == 200, reply
        assert reply.body["map"]["name"] == m.name
        # Removed at the schedd at once; the log then tells the map.
        assert _queue(pool, m.name) == []
        wait_until(lambda: client.maps()[m.name]["counts"].get("removed") == 2, timeout=60,
                   interval=0.5, message="the list should show both items removed")
        assert client.maps()[m.name]["running"] is False
        assert m.wait(timeout=60) and m.status()["removed"] == 2

        reply = client.post(m.name, "retry")
        assert reply.status == 200, reply
        assert reply.body["items"] == [0, 1]
        assert len(htc.attach(m.name, root=home / "maps").clusters) == 2
        wait_until(lambda: len(_queue(pool, m.name)) == 2, timeout=60,
                   message="the retried jobs should be in the queue")
        assert client.maps()[m.name]["running"] is True
        assert client.post(m.name, "cancel").status == 200
        assert _queue(pool, m.name) == []
    finally:
        m.cancel()


@pytest.mark.pool
def test_a_submission_in_flight_is_left_to_its_process(pool: str, home: Path,
                                                       client: Client) -> None:
    """While a notebook queues jobs (its note is written, the schedd not yet answered),
    the listing must not settle the note as "never queued" behind its back."""
    m = htc.map(helpers.nap, [600], root=home / "maps", pool=pool)
    try:
        wait_until(lambda: _queue(pool, m.name), timeout=60, message="the job is not queued")
        m.store.add_pending_submission("in-flight", [0])  # as submit_tasks does first
        row = client.maps()[m.name]
        assert row["submitting"] is True and row["running"] is True
        busy = client.post(m.name, "cancel")
        assert busy.status == 409 and "being submitted" in busy.body["message"], busy
        assert _queue(pool, m.name), "the job was removed"
        assert m.store.pending_submissions() == {"in-flight": [0]}
        assert m.store.unsubmitted() == {}
        m.store.resolve_pending("in-flight", m.clusters[0])  # the notebook confirms it
        # A note left by a process that has ended is settled, as attach() does.
        subprocess.run([sys.executable, "-c",
                        "import sys, pathlib; from htcml_jupyter.engine.store import MapStore; "
                        "MapStore(pathlib.Path(sys.argv[1]))"
                        ".add_pending_submission('abandoned', [0])",
                        str(m.store.path)], check=True)
        assert m.store.pending_submissions() == {"abandoned": [0]}
        row = client.maps()[m.name]
        assert row["submitting"] is False and row["error"] is None
        assert m.store.pending_submissions() == {}
        assert list(m.store.unsubmitted()) == [0]
    finally:
        m.cancel()


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_names_that_are_not_map_names_get_400(client: Client, action: str) -> None:
    for name in BAD_NAMES:
        reply = client.post(name, action)
        assert reply.status == 400, (name, reply)
        assert "map name" in reply.body.get("message", ""), (name, reply)
    # Unquoted: a '/' in the name reaches the handler too (not some other URL).
    raw = _call(client.opener, client.url(f"maps/a/../b/{action}"), "POST",
                {"Authorization": f"token {client.lab.token}"})
    assert raw.status == 400, raw
    missing = client.post("no-such-map", action)
    assert missing.status == 404 and "no map named 'no-such-map'" in missing.body["message"]


def test_requests_need_the_token(client: Client) -> None:
    for token in ("", "wrong" + client.lab.token):
        assert client.get(token=token).status in (401, 403)
        assert client.post("any-map", "cancel", token=token).status in (401, 403)
    assert client.get().status == 200


def test_cookie_login_needs_xsrf_for_post(server: JupyterLab, home: Path) -> None:
    """The browser's way in: a login cookie, and the XSRF token on every POST."""
    m = htc.map(helpers.square, range(2), root=home / "maps", backend="local")
    assert m.wait(timeout=60)
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert _call(browser, f"{server.url}/lab?token={server.token}").status == 200
    xsrf = next((c.value for c in jar if c.name == "_xsrf"), None)
    assert xsrf, [c.name for c in jar]
    url = f"{server.url}/htcml/maps/{m.name}/retry"
    assert _call(browser, f"{server.url}/htcml/maps").status == 200  # GET needs no XSRF
    refused = _call(browser, url, "POST")
    assert refused.status == 403, refused
    assert "_xsrf" in refused.body["message"], refused
    assert _call(browser, url, "POST", {"X-XSRFToken": "forged"}).status == 403
    accepted = _call(browser, url, "POST", {"X-XSRFToken": xsrf})
    assert accepted.status == 200 and accepted.body["items"] == [], accepted


def test_lists_only_the_server_users_maps(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two users' homes: the server of user A lists A's maps, and neither lists nor acts
    on B's, not even through a link that leads from A's root into B's."""
    homes = tmp_path_factory.mktemp("homes")
    mine = htc.map(helpers.square, range(2), root=homes / "a" / ".htcml" / "maps",
                   backend="local")
    theirs = htc.map(helpers.square, range(3), root=homes / "b" / ".htcml" / "maps",
                     backend="local")
    linked = htc.map(helpers.square, range(1), root=homes / "b" / ".htcml" / "maps",
                     backend="local")
    assert mine.wait(timeout=60) and theirs.wait(timeout=60) and linked.wait(timeout=60)
    (homes / "a" / ".htcml" / "maps" / linked.name).symlink_to(linked.store.path)
    # The map root follows the user's home when HTCML_HOME is not set.
    env = {"HOME": str(homes / "a"), "HTCML_HOME": ""}
    with _server(tmp_path_factory.mktemp("lab-a"), env) as lab:
        client = Client(lab)
        reply = client.get()
        assert reply.body["root"] == str(homes / "a" / ".htcml" / "maps")
        assert sorted(client.maps()) == [mine.name]
        assert client.maps()[mine.name]["counts"]["done"] == 2
        for name in (theirs.name, linked.name):
            refused = client.post(name, "retry")
            assert refused.status == 404, refused
    assert theirs.status()["done"] == 3 and linked.status()["done"] == 1


def test_a_map_that_cannot_be_attached_is_listed_with_why(home: Path, client: Client) -> None:
    """One damaged map does not hide the others: it is listed with the reason."""
    good = htc.map(helpers.square, range(3), root=home / "maps", backend="local")
    bad = htc.map(helpers.square, range(2), root=home / "maps", backend="local")
    assert good.wait(timeout=60) and bad.wait(timeout=60)
    meta_file = bad.store.path / "map.json"
    saved = meta_file.read_bytes()
    try:
        meta = json.loads(saved)
        del meta["options"]
        meta_file.write_text(json.dumps(meta))
        listed = client.maps()
        assert "options" in listed[bad.name]["error"], listed[bad.name]
        assert listed[bad.name]["counts"] == {} and listed[bad.name]["running"] is False
        assert listed[good.name]["counts"]["done"] == 3 and listed[good.name]["error"] is None
    finally:
        meta_file.write_bytes(saved)
    assert client.maps()[bad.name]["counts"]["done"] == 2


def test_the_servers_authorizer_decides(home: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Past authentication, the server's Authorizer is asked about the "htcml" resource:
    one that allows reads only lets the sidebar list maps, and refuses cancel and retry
    (403) before they touch the map."""
    m = htc.map(helpers.fail_on_multiples_of_three, range(4), root=home / "maps",
                backend="local")
    assert m.wait(timeout=60) and m.status()["failed"] == 2
    tasks_before = (m.store.path / "tasks.jsonl").read_bytes()
    env = {"HTCML_HOME": str(home), "PYTHONPATH": str(REPO)}
    args = ["--ServerApp.authorizer_class=tests.jupyter_server.ReadOnlyAuthorizer"]
    with _server(tmp_path_factory.mktemp("lab-read-only"), env, args) as lab:
        client = Client(lab)
        assert client.maps()[m.name]["counts"]["failed"] == 2
        for action in ("cancel", "retry"):
            refused = client.post(m.name, action)
            assert refused.status == 403, refused
            assert "not authorized to write on resource: htcml" in refused.body["message"]
    assert (m.store.path / "tasks.jsonl").read_bytes() == tasks_before
    assert htc.attach(m.name, root=home / "maps").status()["failed"] == 2
