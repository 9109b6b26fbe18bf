"""hack/services.sh as a newcomer meets it: a fresh clone in a private (mode 700) directory brings the local
Redis and PostgreSQL up and down as root (PostgreSQL then runs as `postgres`, who cannot enter the clone) and
as an unprivileged user, and a restart after a crash keeps the servers' ports.

Every test runs a private pair of its own (its own checkout or STAMPEDE_SERVICES_DIR), never the suite's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "hack" / "services.sh"
UNPRIVILEGED = "nobody"

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _gone(pid: int) -> bool:
    """Whether the process has exited (a zombie not yet reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.05)


def _pg_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=3)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _clone(dest: Path) -> None:
    """A clone of this repository's HEAD with the working tree's uncommitted changes laid over it, so the test
    runs the scripts as they are now."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the repository")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout with a commit")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, capture_output=True)

    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line]

    for name in git("diff", "--name-only", "--diff-filter=D", "HEAD"):
        (dest / name).unlink(missing_ok=True)
    changed = git("diff", "--name-only", "--diff-filter=d", "HEAD") + git("ls-files", "--others", "--exclude-standard")
    for name in changed:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture
def private_home() -> Iterator[Path]:
    """A fresh directory of mode 700, like /root or a home directory nobody else may enter."""
    home = Path(tempfile.mkdtemp(prefix="stampede-clone-test-"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("who", ["invoking user", "unprivileged user"])
def test_a_fresh_clone_in_a_private_directory_brings_the_services_up_and_down(private_home: Path, who: str) -> None:
    root = os.geteuid() == 0
    if who == "unprivileged user" and not root:
        pytest.skip("switching to an unprivileged user needs root")
    # Deep enough that a Unix socket under the clone would pass the 107-byte limit of a socket path.
    clone = private_home / ("a-checkout-in-a-deep-directory-" + "d" * 60) / "stampede"
    _clone(clone)
    argv_prefix: list[str] = []
    env = {k: v for k, v in os.environ.items() if k != "STAMPEDE_SERVICES_DIR"}
    if who == "unprivileged user":
        for path in [private_home, *private_home.rglob("*")]:
            os.lchown(path, *_ids(UNPRIVILEGED))
        argv_prefix = ["runuser", "-u", UNPRIVILEGED, "--"]
        env["HOME"] = str(private_home)
    before = {p: _stat(p) for p in (private_home, clone)}

    def make(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv_prefix, "make", target], cwd=clone, env=env, capture_output=True, text=True, timeout=300
        )

    services = clone / ".run" / "services"
    try:
        up = make("services-up")
        assert up.returncode == 0, up.stdout + up.stderr
        urls = _read_env(services / "env")
        assert _redis_answers(urls["STAMPEDE_REDIS_URL"])
        with psycopg.connect(urls["STAMPEDE_DATABASE_URL"]) as conn:
            conn.execute("create table written (x int)")
            conn.execute("insert into written values (1)")
            row = conn.execute("select current_setting('data_directory')").fetchone()
        assert row is not None
        data = Path(row[0])
        if root and who == "invoking user":
            # PostgreSQL runs as `postgres`, who cannot enter the private directory: its data lives outside.
            assert not data.is_relative_to(private_home), data
            assert data.owner() == "postgres"
            assert (services / "pg").resolve() == data.parent
        else:
            assert data.resolve() == (services / "pg" / "data").resolve()
            assert data.stat().st_uid == (os.geteuid() if who == "invoking user" else _ids(UNPRIVILEGED)[0])
        # Nothing of the user's own was opened up.
        assert {p: _stat(p) for p in before} == before

        down = make("services-down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert not data.exists(), f"{data} outlived services-down"
        assert not _pg_answers(urls["STAMPEDE_DATABASE_URL"])
        assert not _redis_answers(urls["STAMPEDE_REDIS_URL"])

        clean = make("clean")
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert not (clone / ".run").exists()
        assert {p: _stat(p) for p in before} == before
    finally:
        if services.exists():
            subprocess.run([*argv_prefix, str(clone / "hack" / "services.sh"), "down"], env=env, capture_output=True)


@pytest.fixture
def services_dir() -> Iterator[tuple[Path, dict[str, str]]]:
    """A private pair's STAMPEDE_SERVICES_DIR (under .run, as the fault suite's) and the environment naming it;
    the pair is stopped and its state removed at the end."""
    run = ROOT / ".run" / "tests" / f"services-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "STAMPEDE_SERVICES_DIR": str(run)}
    try:
        yield run, env
    finally:
        subprocess.run([str(SERVICES), "down"], env=env, capture_output=True)
        shutil.rmtree(run, ignore_errors=True)


def _up(env: dict[str, str]) -> None:
    up = subprocess.run([str(SERVICES), "up"], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr


def _plain_bind_fails(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_restart_after_a_crash_keeps_the_ports(services_dir: tuple[Path, dict[str, str]]) -> None:
    """SIGKILL both servers while clients hold pooled connections, as a running API does, then `up` again: both
    come back on their old ports, so every running client finds them again."""
    run, env = services_dir
    _up(env)
    before = _read_env(run / "env")
    pool = [psycopg.connect(before["STAMPEDE_DATABASE_URL"]) for _ in range(4)]
    client = redis.Redis.from_url(before["STAMPEDE_REDIS_URL"])
    try:
        assert client.ping()
        _kill9(_pid(run / "pg" / "data" / "postmaster.pid"))
        _kill9(_pid(run / "redis" / "redis.pid"))
        # The dead server's half-closed connections still hold its port for a bind without SO_REUSEADDR.
        assert _plain_bind_fails(int(before["STAMPEDE_PG_PORT"]))

        _up(env)
        after = _read_env(run / "env")
        assert after == before
        assert _pg_answers(after["STAMPEDE_DATABASE_URL"])
        assert _redis_answers(after["STAMPEDE_REDIS_URL"])
    finally:
        client.close()
        for conn in pool:
            conn.close()


def test_a_pid_file_naming_another_process_does_not_pass_for_a_server(
    services_dir: tuple[Path, dict[str, str]],
) -> None:
    """After a crash the PIDs in the pid files may belong to other processes by now: `up` starts the servers
    all the same, instead of taking those processes for them."""
    run, env = services_dir
    _up(env)
    urls = _read_env(run / "env")
    _kill9(_pid(run / "pg" / "data" / "postmaster.pid"))
    _kill9(_pid(run / "redis" / "redis.pid"))
    other = subprocess.Popen(["sleep", "120"])
    try:
        for pidfile in (run / "pg" / "data" / "postmaster.pid", run / "redis" / "redis.pid"):
            lines = pidfile.read_text().splitlines()
            pidfile.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
        status = subprocess.run([str(SERVICES), "status"], env=env, capture_output=True, text=True).stdout
        assert "redis: down" in status and "postgres: down" in status, status

        _up(env)
        assert _pg_answers(urls["STAMPEDE_DATABASE_URL"])
        assert _redis_answers(urls["STAMPEDE_REDIS_URL"])
        assert other.poll() is None, "the other process was harmed"
    finally:
        other.kill()
        other.wait()


def test_a_redis_cluster_comes_up_fails_over_and_goes_down(services_dir: tuple[Path, dict[str, str]]) -> None:
    """REDIS_MODE=cluster: 3 masters and 3 replicas on loopback that STAMPEDE_REDIS_URL names; a node SIGKILLed
    is replaced by its replica, started again it rejoins, `up` again keeps the ports, and `down` leaves no node
    running and no data behind."""
    run, env = services_dir
    cluster_env = {**env, "STAMPEDE_REDIS_MODE": "cluster"}
    _up(cluster_env)
    conf = _read_env(run / "env")
    ports = [int(p) for p in conf["STAMPEDE_REDIS_CLUSTER_PORTS"].split(",")]
    assert conf["STAMPEDE_REDIS_URL"] == conf["STAMPEDE_REDIS_CLUSTER_URL"] == f"redis+cluster://127.0.0.1:{ports[0]}"

    def roles() -> dict[int, str]:
        out = {}
        for port in ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as r:
                    out[port] = r.execute_command("ROLE")[0].decode()
            except redis.RedisError:
                out[port] = "down"
        return out

    assert sorted(roles().values()) == ["master"] * 3 + ["slave"] * 3
    victim = next(p for p, role in roles().items() if role == "master")
    pid = _pid(run / "redis-cluster" / str(victim) / "redis.pid")
    kill = subprocess.run([str(SERVICES), "kill-redis-node", str(victim)], env=env, capture_output=True, text=True)
    assert kill.returncode == 0, kill.stderr
    assert _gone(pid)
    deadline = time.monotonic() + 60
    while sorted(roles().values()) != ["down"] + ["master"] * 3 + ["slave"] * 2:
        assert time.monotonic() < deadline, f"no replica was promoted: {roles()}"
        time.sleep(0.2)
    start = subprocess.run([str(SERVICES), "start-redis-node", str(victim)], env=env, capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    while roles()[victim] != "slave":
        assert time.monotonic() < deadline, f"the old master did not rejoin as a replica: {roles()}"
        time.sleep(0.2)

    _up(cluster_env)
    assert _read_env(run / "env") == conf
    pids = [_pid(run / "redis-cluster" / str(p) / "redis.pid") for p in ports]
    down = subprocess.run([str(SERVICES), "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert all(_gone(p) for p in pids)
    assert not (run / "redis-cluster").exists()
    assert "STAMPEDE_REDIS_CLUSTER_PORTS" not in (run / "env").read_text()
