"""Pictures of a sale for the demo: the live page in a headless Chromium (screenshot of the finished sale) and
a PNG chart of the sale's timeline (reservations per second, remaining stock, lag), both drawn from what the
live page streams, so the pictures show the same numbers a person watching the page saw.

Each runs in a thread of its own beside the demo's spike and is stopped at the end; when Chromium is not
installed (``hack/chromium.sh``) the screenshot is skipped with the reason, the chart is still drawn.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class TimelineRecorder(threading.Thread):
    """Reads the live page's event stream of one sale and keeps every sample (reconnecting as the page does)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="timeline", daemon=True)
        self.url = url
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as stream:
                    for raw in stream:
                        line = raw.decode().strip()
                        if line.startswith("data:"):
                            sample = json.loads(line[5:])
                            if "error" not in sample:
                                self.samples.append(sample)
                        if self._halt.is_set():
                            return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self._halt.wait(0.5)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def save(self, path: Path) -> None:
        path.write_text("".join(json.dumps(s) + "\n" for s in self.samples))


def timeline_chart(samples: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Draws reservations/s, remaining stock and lag against time into ``path``; False when no sample."""
    if not samples:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = samples[0]["at"]
    t = [s["at"] - t0 for s in samples]
    rate = [s["rate"] for s in samples]
    remaining = [s["remaining"] for s in samples]
    lag_ms = [1000 * (s["lag"]["oldest_pending_s"] or 0.0) for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True)
    panels = (
        (rate, "reservations / s", "#2da44e"),
        (remaining, "remaining stock", "#0969da"),
        (lag_ms, "oldest pending (ms)", "#bf8700"),
    )
    for ax, (values, label, colour) in zip(axes, panels, strict=True):
        ax.plot(t, values, color=colour, linewidth=1.6)
        ax.fill_between(t, values, color=colour, alpha=0.12)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("seconds since the page's first sample")
    last = samples[-1]
    lag = last["lag"]["confirmed"] or {}
    fig.suptitle(title, fontweight="bold")
    axes[0].set_title(
        f"stock {last['stock']:,} · confirmed {last['outcomes']['confirmed']:,} · compensated "
        f"{last['outcomes']['compensated']:,} · drift {last['drift']} · 202→confirmed p99 "
        f"{1000 * lag.get('p99', 0.0):.0f} ms over {lag.get('n', 0):,}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def chromium(root: Path) -> str | None:
    """Debian's Chromium as hack/chromium.sh finds it, or None."""
    found = subprocess.run(
        [str(root / "hack" / "chromium.sh"), "path"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return found or None


class PageWatcher(threading.Thread):
    """Keeps the live page open in a headless Chromium while the sale runs (so its timeline fills), buys one
    unit from it as a demo buyer, then saves a screenshot once the page shows the sale settled."""

    def __init__(self, executable: str, url: str, path: Path) -> None:
        super().__init__(name="page", daemon=True)
        self.executable, self.url, self.path = executable, url, path
        self.error: str | None = None
        self.ready = threading.Event()  # the page is open and shows the sale
        self._finish = threading.Event()

    def run(self) -> None:
        try:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=self.executable, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                page.goto(self.url)
                page.wait_for_selector('#remaining[data-value]:not([data-value=""])', timeout=60_000)
                self.ready.set()
                # A demo buyer takes part in the spike from the page, as a person would.
                page.click("#buy")
                self._finish.wait()
                # Settled: nothing pending on either side (the page then shows the final lag figures).
                page.wait_for_selector('#pending[data-value="0"]', timeout=60_000)
                page.wait_for_function("document.getElementById('drift-note').textContent.startsWith('settled')")
                time.sleep(1)
                page.screenshot(path=str(self.path), full_page=True)
                browser.close()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def finish(self, timeout: float = 90) -> bool:
        """Lets the thread take its screenshot; True when it saved one."""
        self._finish.set()
        self.join(timeout)
        return self.error is None and self.path.exists()
