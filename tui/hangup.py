"""A dropped terminal (SIGHUP) closes the UI, never the run: training goes on headless.

Closing the SSH connection, or `tmux kill-session`, hangs up the pty and sends SIGHUP. Writes to
a hung-up terminal fail with EIO, so the handler first points fds 0/1/2 at /dev/null, then asks
the app to exit. ``run_tui`` then calls ``continue_headless``: the UI sink is dropped, stderr goes
to the run's log.txt, and the process waits for the run and exits with its code. Events, status
and the human log keep flowing through the run directory, where `finetty watch` finds them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

# If the UI cannot shut down (its writer thread died on EIO before the handler ran), the process
# still ends this long after the run does, with the run's exit code.
WATCHDOG_GRACE_S = 10.0


def detach_stdio(stderr_path: Path | None = None) -> None:
    """Point fds 0 and 1 at /dev/null and fd 2 at ``stderr_path`` (else /dev/null)."""
    null = os.open(os.devnull, os.O_RDWR)
    err = null
    if stderr_path is not None:
        with contextlib.suppress(OSError):
            err = os.open(stderr_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for fd, target in ((0, null), (1, null), (2, err)):
        with contextlib.suppress(OSError):
            os.dup2(target, fd)
    for fd in {null, err}:
        os.close(fd)


class Hangup:
    """Installed by ``run_tui`` around ``app.run()``; ``happened`` tells it the terminal is gone."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.happened = threading.Event()
        self.app_done = False  # set by run_tui once app.run() has returned

    def install(self) -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self, signum: int, frame: object) -> None:
        if self.happened.is_set():
            return
        self.happened.set()
        detach_stdio()  # first: nothing may write to the dead terminal from here on
        self._request_exit()
        threading.Thread(target=self._watchdog, name="finetty-hangup", daemon=True).start()

    def _request_exit(self) -> bool:
        loop = getattr(self.app, "_loop", None)
        if loop is None:
            return False  # not started yet, or already gone
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self.app.exit)
        return True

    def _watchdog(self) -> None:
        exit_sent = getattr(self.app, "_loop", None) is not None
        while True:
            run = self.app.run_handle
            if run is not None and not run.alive:
                break
            if run is None and self.app_done:
                break
            if not exit_sent:  # SIGHUP came before the app's loop started
                exit_sent = self._request_exit()
            time.sleep(0.5)
        time.sleep(WATCHDOG_GRACE_S)
        result = getattr(run, "result", None)
        os._exit(int(result.exit_code) if result is not None else 0)

    def continue_headless(self, run: Any) -> int:
        """Wait for ``run`` without a UI; SIGTERM still stops it with a checkpoint."""
        from engine.core.errors import EXIT_FAILED, EXIT_OK

        if run is None:
            return EXIT_OK
        run.sink.sinks = [sink for sink in run.sink.sinks if sink is run.dir_sink]
        detach_stdio(run.run_dir / "log.txt")  # library warnings and tracebacks land in the log

        def on_stop_signal(signum: int, frame: object) -> None:
            if signum == signal.SIGTERM:
                run.stop_signal = "sigterm"
            run.control.stop()

        signal.signal(signal.SIGTERM, on_stop_signal)
        signal.signal(signal.SIGINT, on_stop_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while run.alive:
            run.join(timeout=0.5)
        result = run.result
        return int(result.exit_code) if result is not None else EXIT_FAILED
