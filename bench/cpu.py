"""CPU time of a benchmark's parts over one measured window, from ``/proc``.

Throughput alone says that something got slower, not where. Splitting the CPU the run spent into the API's
gunicorn processes, the settle workers, Redis and PostgreSQL (and the rest of the machine: the load generator and
anything else running) says which part pays for a request, per durable 202 — comparable between two runs of
different throughput, and between two versions of the code measured back to back.

A part is a list of root pids; each root counts its own time, the time of its children it has reaped (kernel's
cutime/cstime: a PostgreSQL backend that exits inside the window is not lost) and the time of its live children.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def _ticks(pid: int, *, reaped: bool) -> int:
    """utime + stime (+ cutime + cstime) of one process, 0 if it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields from state (3rd) on
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime + (cutime + cstime if reaped else 0)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def tree_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, of the children it reaped and of its live children (one level: gunicorn's and
    PostgreSQL's process trees are one level deep)."""
    return TICK_S * (_ticks(pid, reaped=True) + sum(_ticks(c, reaped=False) for c in _children(pid)))


def machine_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (every state of /proc/stat's cpu line but idle and
    iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return TICK_S * (user + nice + system + irq + softirq + steal)


def pid_from_file(path: Path) -> int | None:
    """The pid on a pid file's first line (Redis's pid file, PostgreSQL's postmaster.pid), None if absent."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (FileNotFoundError, ValueError):
        return None


def services_pids(services_dir: Path = ROOT / ".run" / "services") -> dict[str, list[int]]:
    """The project's own Redis and PostgreSQL (hack/services.sh) by their pid files."""
    parts: dict[str, list[int]] = {}
    for name, path in (
        ("redis", services_dir / "redis" / "redis.pid"),
        ("postgresql", services_dir / "pg" / "data" / "postmaster.pid"),
    ):
        pid = pid_from_file(path)
        parts[name] = [pid] if pid else []
    return parts


class CpuMeter:
    """CPU seconds per part between :meth:`start` and :meth:`stop`; ``other`` is the machine's busy time that no
    part accounts for."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        got = {name: sum(tree_seconds(pid) for pid in pids) for name, pids in self.parts.items()}
        got["machine"] = machine_seconds()
        return got

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        spent = {name: end[name] - self._start[name] for name in end}
        spent["other"] = spent["machine"] - sum(spent[name] for name in self.parts)
        return spent
