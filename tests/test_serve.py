"""``reality serve`` as a real process, answering over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import dbs
from tests.test_endpoint import PROBLEM, Store

REPO = Path(__file__).resolve().parent.parent
#: Bounds on waiting for the server to start and stop; exceeding them fails the test as
#: hung. They are never asserted as speeds.
START_BOUND = 60.0
STOP_BOUND = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reality_core.cli", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALITY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, base: str) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}{base}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(tmp_path: Path, database_url: str, *args: str, base: str = "/reality"
          ) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out, subprocess.Popen(
        command("serve", "--database-url", database_url, "--port", str(port), *args),
        env=environment(), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share its process group: stopped together
    ) as proc:
        server = Server(proc, port, log, base)
        try:
            wait_until_up(server)
            yield server
        finally:
            stop(server)


def wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"reality serve exited with {server.proc.returncode}:\n{server.output()}")
        try:
            httpx.get(f"{server.url}/health", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return
    pytest.fail(f"reality serve did not answer within {START_BOUND}s:\n{server.output()}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(STOP_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)  # our own process group, nothing else
        server.proc.wait(STOP_BOUND)
        pytest.fail(f"reality serve ignored SIGTERM:\n{server.output()}")


def assert_stopped(server: Server) -> None:
    """The server shut down on SIGTERM without a traceback, and nothing (no orphaned
    worker) still holds its port."""
    # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully (-15); the
    # multi-worker supervisor exits with 0.
    assert server.proc.returncode in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """reality.db in tmp_path, which the servers below name by a relative URL (their working
    directory is tmp_path)."""
    store = Store(f"sqlite:///{tmp_path}/reality.db")
    try:
        yield store
    finally:
        store.close()


def check_sync(server: Server, store: Store) -> None:
    store.bump("room:7")
    # "mutation": the client just wrote, so the server answers from a refresh of its cache
    # that began after the request arrived (read-your-writes).
    response = httpx.post(f"{server.url}/sync", timeout=30,
                          json={"known": {"room:7": 0, "room:8": 0}, "hint": "mutation"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["epoch"] == store.epoch
    assert {k: v["version"] for k, v in body["changed"].items()} == {
        "room:7": store.version("room:7"),
    }


def test_serve_sqlite_over_http(tmp_path: Path, sqlite_store: Store) -> None:
    with serve(tmp_path, "sqlite:///reality.db") as server:
        health = httpx.get(f"{server.url}/health", timeout=30)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "store": "ok"}
        head = httpx.head(f"{server.url}/health", timeout=30)
        assert head.status_code == 200
        assert head.content == b""
        check_sync(server, sqlite_store)

        bad = httpx.post(f"{server.url}/sync", content=b'{"known": [', timeout=30,
                         headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == PROBLEM
        assert bad.json()["code"] == "malformed_json"

        def upload() -> Iterator[bytes]:
            yield b'{"known": {}}'
            for _ in range(32):
                yield b" " * 65_536

        big = httpx.post(f"{server.url}/sync", content=upload(), timeout=30,
                         headers={"content-type": "application/json"})
        assert big.status_code == 413
        assert big.json()["code"] == "body_too_large"

        wrong = httpx.get(f"{server.url}/sync", timeout=30)
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        check_sync(server, sqlite_store)  # still answering after all that
    assert_stopped(server)


def test_serve_postgres_with_a_custom_base(
    tmp_path: Path, pg_server_url: str
) -> None:
    url = dbs.create_pg_database(pg_server_url)
    try:
        store = Store(url)
        try:
            with serve(tmp_path, url, "--base", "/api/rt", base="/api/rt") as server:
                check_sync(server, store)
                assert httpx.post(f"http://127.0.0.1:{server.port}/reality/sync",
                                  json={"known": {}}, timeout=30).status_code == 404
            assert_stopped(server)
        finally:
            store.close()
    finally:
        dbs.drop_pg_database(url, pg_server_url)


def test_serve_with_two_workers(tmp_path: Path, sqlite_store: Store) -> None:
    with serve(tmp_path, "sqlite:///reality.db", "--workers", "2") as server:
        for _ in range(10):
            # A new connection each time, so the kernel spreads them over the workers.
            check_sync(server, sqlite_store)
    assert_stopped(server)


def test_two_servers_on_one_database_agree(tmp_path: Path, pg_server_url: str) -> None:
    """Horizontal scale: two `reality serve` processes (each with its own cache, one of them
    with two workers, and a third without cache) report the same version, hash and epoch
    for every key, with and without the mutation hint, while keys keep changing and
    folding runs in each of them."""
    url = dbs.create_pg_database(pg_server_url)
    store = Store(url)
    keys = [f"room:{i}" for i in range(20)]
    try:
        with serve(tmp_path, url) as one, \
                serve(tmp_path, url, "--workers", "2", "--refresh-interval", "0.02") as two, \
                serve(tmp_path, url, "--no-cache") as naive:
            for round_ in range(15):
                store.bump(*keys[: 1 + round_ % len(keys)], "$esc:room:1")
                truth = {k: v for k in keys if (v := store.version(k))}
                known = {"known": dict.fromkeys(keys, 0), "hint": "mutation"}
                answers = [httpx.post(f"{s.url}/sync", json=known, timeout=30)
                           for s in (one, two, naive)]
                for answer in answers:
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["epoch"] == store.epoch
                    assert {k: v["version"] for k, v in answer.json()["changed"].items()} \
                        == truth
                assert answers[0].json()["changed"] == answers[1].json()["changed"] \
                    == answers[2].json()["changed"]
            # Without the hint every process converges on its own within its refresh.
            idle = {"known": dict.fromkeys(keys, 0)}
            deadline = time.monotonic() + 10
            while True:
                changed = [httpx.post(f"{s.url}/sync", json=idle, timeout=30).json()["changed"]
                           for s in (one, two, two, naive)]
                if all(c == changed[-1] for c in changed):
                    break
                assert time.monotonic() < deadline, changed
                time.sleep(0.05)
        for server in (one, two, naive):
            assert_stopped(server)
    finally:
        store.close()
        dbs.drop_pg_database(url, pg_server_url)


def test_serve_an_unreachable_database_starts_and_reports_503(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=3"
    with serve(tmp_path, url) as server:
        health = httpx.get(f"{server.url}/health", timeout=30)
        assert health.status_code == 503
        assert health.headers["retry-after"]
        assert health.json()["reason"] == "store_unavailable"
        sync = httpx.post(f"{server.url}/sync", json={"known": {"a": 1}}, timeout=30)
        assert sync.status_code == 503
        assert sync.headers["content-type"] == PROBLEM
        assert sync.headers["retry-after"]
    assert_stopped(server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "abc"], "a port is a number from 1 to 65535, not 'abc'"),
        (["--port", "0"], "a port is a number from 1 to 65535, not '0'"),
        (["--port", "70000"], "a port is a number from 1 to 65535, not '70000'"),
        (["--port", "-5"], "a port is a number from 1 to 65535"),
        (["--workers", "0"], "expected a positive integer, not '0'"),
        (["--refresh-interval", "0"], "expected seconds, e.g. 0.05, not '0'"),
        (["--refresh-interval", "soon"], "expected seconds, e.g. 0.05, not 'soon'"),
        (["--max-staleness", "-1"], "expected seconds"),
        (["--refresh-interval", "3", "--max-staleness", "2"],
         "--max-staleness must be longer than --refresh-interval"),
        (["--max-in-flight", "0"], "expected a positive integer, not '0'"),
        (["--base", "reality"], "base must be a path like '/reality'"),
        (["--database-url", "nope"], "not a database URL: 'nope'"),
        (["--database-url", "oracle://scott:tiger@db/orcl"], "'oracle' is not one of them"),
        (["--database-url", "postgresql+pg9000://u@h/db"], "unknown postgresql driver 'pg9000'"),
        (["--database-url", "postgresql://u:s3cret@h:99999/db"], "bad port in"),
        (["--database-url", "postgresql://u:s3cret@h:port/db"], "bad port in"),
        (["--database-url", "sqlite://somehost/app.db"], "an SQLite URL has no host"),
        ([], "--database-url"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_clear_message(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if "--database-url" not in args and args:
        args = ["--database-url", f"sqlite:///{tmp_path}/x.db", *args]
    result = subprocess.run(command("serve", *args), env=environment(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=START_BOUND, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "tiger" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching anything
