"""The Textual app: wiring only. Screens do the work; the engine loads on a worker thread.

Nothing heavy is imported here (no torch, peft or engine.train.run) so the first screen paints at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App

from tui.bridge import JsonlTail, RunDirControl, UiBridge
from tui.messages import RunAttached
from tui.screens.dashboard import DashboardScreen

if TYPE_CHECKING:
    from engine.config.schema import Preset


class FinettyApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "finetty"
    ENABLE_COMMAND_PALETTE = False

    def __init__(
        self,
        preset: Preset | str | None = None,
        *,
        overrides: list[str] | None = None,
        runs_root: Path | None = None,
        resume_dir: Path | None = None,
        watch_dir: Path | None = None,
        start_screen: str | None = None,
        preset_path: str | None = None,
    ) -> None:
        super().__init__()
        self.preset_path = preset_path
        self.preset = preset  # a str (name or file) is loaded and validated on the worker
        self.overrides = overrides or []
        self.runs_root = runs_root
        self.resume_dir = resume_dir
        self.watch_dir = watch_dir
        self.start_screen = start_screen
        self.run_handle: Any = None  # engine.train.run.Run once launched
        self.job: Any = None  # subprocess.Popen of a multi-GPU job started from here
        self.launch_error: Any = None  # a FinettyError raised before the run started
        self.detached = False  # the user left the dashboard with "leave the run going"
        self.tail: JsonlTail | None = None

    def on_mount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.on_sigterm)
        if self.watch_dir is not None:
            self.open_watch(self.watch_dir)
        elif self.start_screen == "review":
            self.open_review(self.preset_path or str(getattr(self.preset, "name", self.preset)))
        elif self.preset is not None or self.resume_dir is not None:
            self.launch_run(self.preset, resume_dir=self.resume_dir)
        else:
            from tui.screens.home import HomeScreen  # here: a watch or a run never needs it

            self.push_screen(HomeScreen(self.runs_root))

    def open_wizard(self, step: int, preset_ref: str | Path | None = None) -> None:
        from tui.screens.wizard_flow import step_screen
        from tui.wizard_state import WizardState

        state = WizardState.from_file(preset_ref) if preset_ref else WizardState()
        self.push_screen(step_screen(step, state))

    def open_review(self, preset_ref: str | Path) -> None:
        from engine.core.errors import FinettyError

        try:
            self.open_wizard(4, preset_ref)
        except FinettyError as error:
            self._show_error(error.title, error.message, error.hint)

    # Messages from the home and wizard screens (matched by name: no import until used).
    def on_home_screen_new_run(self) -> None:
        self.open_wizard(0)

    def on_home_screen_open_preset(self, message: Any) -> None:
        self.open_review(message.path)

    def on_home_screen_open_run(self, message: Any) -> None:
        self.open_watch(message.run_dir)  # replays a finished run; follows a live one

    def on_review_screen_launch(self, message: Any) -> None:
        if getattr(message, "gpus", 1) > 1:
            self.launch_job(message.preset, message.gpus)
        else:
            self.launch_run(message.preset)

    def launch_job(self, preset: Preset, gpus: int) -> None:
        """Several GPUs: torchrun in a session of its own, watched through its run directory.
        Leaving the TUI leaves the job running (`finetty watch latest` comes back to it)."""
        from engine.config.presets import to_yaml
        from engine.core.errors import FinettyError
        from engine.runs import rundir, runlock
        from tui.launch import LaunchPlan, start_job, torchrun_command

        try:
            from engine.parallel.sharded import check_launch

            check_launch(preset)
            run_dir = rundir.new_run_dir(preset.name, self.runs_root or rundir.runs_root())
        except FinettyError as error:
            self._show_error(error.title, error.message, error.hint)
            return
        config = run_dir / "config.yaml"
        config.write_text(to_yaml(preset), encoding="utf-8")
        plan = LaunchPlan(gpus, 1, 0, None, 29500)
        self.job = start_job(
            torchrun_command(plan, [str(config)]),
            run_dir / "launcher.log",
            runlock.launch_env(run_dir),
        )
        self.notify(f"{gpus} processes under torchrun; output in {run_dir / 'launcher.log'}")
        self.open_watch(run_dir)

    def on_review_screen_probe(self, message: Any) -> None:
        screen = self.screen
        if hasattr(screen, "start_probe"):  # the review screen runs it and shows the figures
            screen.start_probe(message.preset, self.runs_root)

    # -- modes ---------------------------------------------------------------------------------
    def launch_run(self, preset: Preset | str | None, *, resume_dir: Path | None = None) -> None:
        """Push a dashboard at once; import the engine and start the Run on a worker."""
        name = str(getattr(preset, "name", preset) if preset is not None else resume_dir)
        name = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        bridge = UiBridge()
        dashboard = DashboardScreen(bridge, title=name)
        self.push_screen(dashboard)
        self._start_run(preset, resume_dir, bridge, dashboard)

    @work(thread=True, group="engine")
    def _start_run(
        self,
        preset: Preset | str | None,
        resume_dir: Path | None,
        bridge: UiBridge,
        dashboard: DashboardScreen,
    ) -> None:
        from engine.core.errors import FinettyError
        from tui.quiet import quiet_libraries

        quiet_libraries()
        from engine.train.run import Run

        try:
            if isinstance(preset, str):
                from engine.config.presets import load_preset

                preset, _ = load_preset(preset, self.overrides)
            if preset is None and resume_dir is not None:
                from engine.config.presets import run_config

                preset = run_config(resume_dir)
            if preset is None:
                raise FinettyError("No preset to run.")
            run = Run(preset, bridge, runs_root=self.runs_root, resume_dir=resume_dir)
        except FinettyError as error:
            self.launch_error = error
            self.call_from_thread(self._show_error, error.title, error.message, error.hint)
            return
        if resume_dir is not None:
            # A resumed run is one run: the dashboard shows its earlier segments too.
            from engine.runs.runstate import read_events

            for event in read_events(run.run_dir / "events.jsonl"):
                bridge.emit(event)
        run.start()
        self.run_handle = run  # published once started: a watcher never sees a run not yet alive
        dashboard.post_message(RunAttached(run))

    def open_watch(self, run_dir: Path) -> None:
        bridge = UiBridge()
        dashboard = DashboardScreen(
            bridge, control=RunDirControl(run_dir), run_dir=run_dir, watch=True, title=run_dir.name
        )
        self.push_screen(dashboard)
        if self.tail is not None:
            self.tail.stop()
        self.tail = JsonlTail(run_dir / "events.jsonl", bridge)
        self.tail.start()

    def _show_error(self, title: str, message: str, hint: str | None) -> None:
        from tui.screens.error import ErrorScreen

        self.push_screen(ErrorScreen(title, message, hint))

    # -- leaving -------------------------------------------------------------------------------
    def dashboard(self) -> DashboardScreen | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    async def action_quit(self) -> None:
        dashboard = self.dashboard()
        if dashboard is None:
            self.exit()
        else:
            dashboard.request_quit()

    def on_sigterm(self) -> None:
        run = self.run_handle
        dashboard = self.dashboard()
        if run is None or not run.alive or dashboard is None:
            self.exit()
            return
        run.stop_signal = "sigterm"
        dashboard.quitting = True
        run.control.stop()

    def on_unmount(self) -> None:
        if self.tail is not None:
            self.tail.stop()


def run_tui(
    preset: Preset | str | None = None,
    *,
    overrides: list[str] | None = None,
    runs_root: Path | None,
    resume_dir: Path | None = None,
    watch_dir: Path | None = None,
    start_screen: str | None = None,
    preset_path: str | None = None,
) -> int:
    """Run the app; the exit code matches headless runs (0, 1, 2, 130, 143).

    ``preset`` may be a validated Preset or a name/file (with ``overrides``) that the worker loads
    after the first paint; a bad one then shows in a modal and exits with 2.
    """
    from engine.core.errors import EXIT_OK, EXIT_STOPPED, EXIT_TERMINATED

    app = FinettyApp(
        preset,
        overrides=overrides,
        runs_root=runs_root,
        resume_dir=resume_dir,
        watch_dir=watch_dir,
        start_screen=start_screen,
        preset_path=preset_path,
    )
    from tui.hangup import Hangup

    hangup = Hangup(app)  # a dropped terminal closes the UI; the run goes on headless
    hangup.install()
    app.run()
    hangup.app_done = True
    run = app.run_handle
    if app.launch_error is not None:
        return int(app.launch_error.exit_code)
    if hangup.happened.is_set():
        return hangup.continue_headless(run)
    if app.detached and run is not None and run.alive:
        print(
            f"finetty: the run goes on in this process (pid {os.getpid()}) without the dashboard."
            f"\n  see it again: finetty watch {run.run_dir}"
            "\n  stop it with a checkpoint: Ctrl+C here, or x in `finetty watch`"
            "\n  closing this terminal leaves it running; its output goes to log.txt",
            file=sys.stderr,
            flush=True,
        )
        return hangup.continue_headless(run)
    if run is None:
        return app.return_code or EXIT_OK
    if run.alive and run.control.aborted.is_set():
        run.join(timeout=5)  # loading or evaluating cannot be interrupted; nothing to save yet
        return EXIT_TERMINATED if run.stop_signal == "sigterm" else EXIT_STOPPED
    if run.alive:  # the terminal went away mid-run: never leave a run without a checkpoint
        print("finetty: stopping the run (writing a checkpoint)…", file=sys.stderr)
        run.control.stop()
        try:
            run.join()
        except KeyboardInterrupt:
            run.control.abort()
            run.join(timeout=10)
            return EXIT_TERMINATED if run.stop_signal == "sigterm" else EXIT_STOPPED
    result = run.result
    if result is None:
        return EXIT_STOPPED
    if result.error is not None:
        from tui.report import report_error

        report_error(result.error)
    print(f"run directory: {result.run_dir}", file=sys.stderr)
    return int(result.exit_code)
