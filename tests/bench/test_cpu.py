"""bench/cpu.py counts the CPU a part really spent in the window: real processes burning real CPU."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import cpu

# Waits for the go file (created once the window is open), then burns 0.6 s of CPU.
BURN = (
    "import os, time\n"
    "while not os.path.exists({go!r}): time.sleep(0.01)\n"
    "end = time.process_time() + 0.6\n"
    "while time.process_time() < end: pass\n"
)


def test_a_busy_process_and_the_children_it_reaped_are_counted_and_an_idle_one_is_not(tmp_path: Path) -> None:
    go = str(tmp_path / "go")
    busy = subprocess.Popen([sys.executable, "-c", BURN.format(go=go) + "time.sleep(60)"])
    # A parent whose child burns and exits inside the window: its time arrives as the parent's reaped time.
    child = BURN.format(go=go)
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys, time\nsubprocess.run([sys.executable, '-c', {child!r}])\n"
         "time.sleep(60)"]
    )  # fmt: skip
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        meter = cpu.CpuMeter({"busy": [busy.pid], "parent": [parent.pid], "idle": [idle.pid]})
        meter.start()
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (meter.stop()["busy"] < 0.5 or meter.stop()["parent"] < 0.5):
            time.sleep(0.1)
        spent = meter.stop()
    finally:
        for p in (busy, parent, idle):
            p.kill()
            p.wait()
    # Each burned 0.6 s by its own precise clock; /proc counts in scheduler ticks (10 ms), sampled, so a few
    # ticks either way.
    assert 0.5 <= spent["busy"] <= 1.0
    assert 0.5 <= spent["parent"] <= 1.0
    assert spent["idle"] < 0.05
    assert spent["machine"] >= spent["busy"] + spent["parent"] - 0.05
    assert abs(spent["other"] - (spent["machine"] - spent["busy"] - spent["parent"] - spent["idle"])) < 1e-9


def test_a_missing_pid_file_is_no_process() -> None:
    assert cpu.pid_from_file(Path("/nonexistent/redis.pid")) is None
