"""The one entry point that turns a validated preset into a run.

Only this module reads the whole preset, through the rules of engine.config.derived (which the
estimator and the probe ask too); everything below it takes plain arguments. A Run is prepared
on the caller's thread (cheap checks, run directory) and executed on a worker thread, in steps
that read in order (``_execute``); front-ends watch it through events and drive it through
``run.control``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.derived import (
    ModelLoad,
    Precision,
    TrainSettings,
    auto_micro_batch,
    dataset_prep,
    graphs_wanted,
    micro_batch,
    model_load,
    pair_prep,
    precision,
    reads_pairs,
    reference_weights,
    task_label,
    train_settings,
    uses_fsdp,
    uses_gpu,
)
from engine.config.schema import BUILTIN_DATASET, Preset
from engine.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TERMINATED,
    FinettyError,
    RunDirError,
    TrainingError,
)
from engine.core.events import (
    DatasetStats,
    EventSink,
    Failed,
    FanoutSink,
    Finished,
    LogLine,
    Progress,
    RunStarted,
    StateChanged,
)
from engine.data import builtin_data
from engine.parallel import distributed
from engine.runs import rundir, runlock
from engine.runs.control import RunAborted, RunControl
from engine.runs.trackers.factory import check_installed, tracker_sinks


@dataclass(frozen=True)
class Heldout:
    """What the run scores before and after training: the built-in skills' questions (exact
    match) and a preference run's held-out pairs (preference accuracy)."""

    questions: list[Any]
    pairs: list[Any]


@dataclass
class RunResult:
    status: str  # finished, stopped, failed
    exit_code: int
    run_dir: Path
    error: FinettyError | None = None


def find_resume_checkpoint(run_dir: Path, sink: EventSink, load: Callable[[Path], None]) -> Path:
    """Resume from the newest checkpoint that ``load`` accepts (it reads and checks every file
    before applying any). A damaged one is skipped with a warning naming what is wrong, and the
    one before it is tried; RunDirError when none can be used."""
    from engine.runs import checkpoint

    directory = run_dir / "checkpoints"
    for partial in checkpoint.incomplete_checkpoints(directory):
        sink.emit(
            LogLine(
                level="warning",
                text=f"Skipping incomplete checkpoint {partial.name} (no COMPLETE marker).",
            )
        )
    complete = checkpoint.complete_checkpoints(directory)
    if not complete:
        raise RunDirError(
            f"{run_dir} has no complete checkpoint to resume from.",
            hint="Start a new run instead (without --resume).",
        )
    problems = []
    for path in reversed(complete):
        try:
            load(path)
        except RunDirError as exc:
            problems.append(f"{path.name}: {exc.message}")
            sink.emit(
                LogLine(level="warning", text=f"Skipping checkpoint {path.name}: {exc.message}")
            )
            continue
        return path
    raise RunDirError(
        f"None of the {len(complete)} checkpoints of {run_dir} can be resumed from. "
        + " ".join(problems),
        hint="Each problem above names its file. Start a new run instead (without --resume), "
        "or restore the damaged files from a copy.",
    )


class Run:
    def __init__(
        self,
        preset: Preset,
        sink: EventSink,
        *,
        runs_root: Path | None = None,
        resume_dir: Path | None = None,
        new_run_dir: Path | None = None,
        hardware_interval: float = 2.0,
    ) -> None:
        """``new_run_dir``: an empty run directory made beforehand (the multi-GPU launcher makes
        one so that it can watch it before the ranks start)."""
        self.preset = preset
        # Under torchrun only rank 0 owns the run directory; the other ranks follow its commands
        # and report a failure through torch.distributed's store (see engine.parallel.distributed).
        self.rank = distributed.rank_from_env() if distributed.launched_distributed() else 0
        self.dist: distributed.DistContext | None = None
        # Rank 0 of a job: the ranks that did not get to the end with it (engine.parallel.distributed).
        self.unended_ranks: list[int] = []
        self.hardware_interval = hardware_interval
        self._accuracy: dict[str, float] = {}
        self.stop_signal: str = "user"  # "user" (Ctrl+C, stop command) or "sigterm"
        self.result: RunResult | None = None
        self._thread: threading.Thread | None = None
        # Rank 0 is the run directory's one writer: it holds the lock from before its first
        # write until its last (engine.runs.runlock), so a second trainer is refused, not interleaved.
        self.lock: runlock.RunLock | None = None
        self.created_dir = False  # this process made the folder (a never-trained one may go)
        if self.rank == 0:
            # A tracker whose library is missing is a mistake in the preset: refused before any file.
            check_installed(preset.training.report_to)
        if resume_dir is not None:
            self.run_dir = resume_dir
            if self.rank == 0:
                # For every caller, not only the CLI: a finished run is never trained again.
                rundir.check_resumable(resume_dir, need_checkpoint=False)
                self.lock = runlock.acquire(resume_dir)
        elif self.rank != 0:
            self.run_dir = new_run_dir or Path(os.devnull)  # never written by this rank
        else:
            from engine.config.presets import to_yaml

            self.created_dir = new_run_dir is None
            self.run_dir = new_run_dir or rundir.new_run_dir(
                preset.name, rundir.runs_root(str(runs_root) if runs_root else None)
            )
            self.lock = runlock.acquire(self.run_dir)
            if new_run_dir is not None:
                runlock.claim_launched(new_run_dir)
            try:
                (self.run_dir / "config.yaml").write_text(to_yaml(preset), encoding="utf-8")
            except OSError as exc:
                self.lock.release()
                raise runlock.unwritable_error(self.run_dir, exc) from None
        self.resuming = resume_dir is not None
        self.trained = False  # RunStarted was emitted: training began
        self.dir_sink: rundir.RunDirSink | None = None
        if self.rank == 0:
            try:
                self.dir_sink = rundir.RunDirSink(self.run_dir)
                reader = rundir.CommandReader(self.run_dir / "commands.jsonl")
            except OSError as exc:  # a read-only or full file system
                self._release_lock()
                raise runlock.unwritable_error(self.run_dir, exc) from None
            except FinettyError:
                self._release_lock()
                raise
            self.sink = FanoutSink(self.dir_sink, sink)
            # Trackers (rank 0 only) come after the run's own sinks, to which a failing one
            # reports its alarm: a separate fan-out, as this one's lock is held while they run.
            for tracker in tracker_sinks(
                preset.training.report_to, self.run_dir, FanoutSink(self.dir_sink, sink)
            ):
                self.sink.add(tracker)
            self.control = RunControl(external=reader.poll)
        else:
            self.sink = FanoutSink(sink)
            self.control = RunControl()
        self.model: Any = None
        self.tokenizer: Any = None
        self.chat_template: str | None = None
        # Where and how this process trains: set by _place, the run's first step.
        self.device = "cpu"
        self.precision = Precision("float32", None, grad_scaler=False)
        self.sharded = False
        # Preference pairs (dpo, orpo, simpo; kto's unpaired examples) instead of SFT rows: the data path and the
        # held-out score (preference accuracy instead of exact match) follow.
        self.pairs = reads_pairs(preset)
        # GRPO samples from prompts: its data path and its Task are its own (engine.train.tasks.grpo).
        self.grpo = preset.task == "grpo"
        self._rewards: list[Any] = []
        self._settings: TrainSettings | None = None  # the trainer's, once made

    # -- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._execute_safely, name="finetty-engine", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> RunResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def execute(self) -> RunResult:
        """Run in the calling thread (tests, scripts)."""
        self._execute_safely()
        if self.result is None:
            raise RuntimeError("the run ended without a result")
        return self.result

    def _execute_safely(self) -> None:
        try:
            self._execute_reporting()
        except Exception:  # noqa: BLE001 - the engine thread must never end without a result
            # Reporting the failure failed too (a sink that raised): the thread must still end
            # with a result and leave the trace where the user is told to look.
            trace = traceback.format_exc()
            if self.dir_sink is not None:
                with open(self.run_dir / "log.txt", "a", encoding="utf-8") as log:
                    log.write(trace)
            print(trace, file=sys.stderr, flush=True)
            if self.result is None:
                self.result = RunResult(
                    "failed",
                    EXIT_FAILED,
                    self.run_dir,
                    FinettyError(trace.strip().splitlines()[-1]),
                )

    def _execute_reporting(self) -> None:
        started = time.time()
        step = 0
        discard = False
        monitor = self._monitor = self._hardware_monitor()
        if self.rank == 0:
            monitor.start()
        try:
            try:
                outcome, paths = self._execute()
            finally:
                monitor.stop()  # no hardware sample may follow the final event
            step = outcome.step
            stopped = outcome.status == "stopped"
            code = (
                (EXIT_TERMINATED if self.stop_signal == "sigterm" else EXIT_STOPPED)
                if stopped
                else EXIT_OK
            )
            metrics = {
                key: value
                for key, value in {
                    "final_loss": outcome.final_loss,
                    "best_loss": outcome.best_loss,
                    "eval_loss": outcome.eval_loss,
                    "tokens_seen": float(outcome.tokens_seen),
                    **self._accuracy,
                }.items()
                if value is not None
            }
            self.sink.emit(
                Finished(outcome.status, outcome.step, metrics, paths, time.time() - started)
            )
            self.result = RunResult(outcome.status, code, self.run_dir)
        except RunAborted:
            self.sink.emit(Finished("stopped", step, {}, {}, time.time() - started))
            code = EXIT_TERMINATED if self.stop_signal == "sigterm" else EXIT_STOPPED
            self.result = RunResult("stopped", code, self.run_dir)
        except FinettyError as error:
            self._fail(error.kind, error.title, error.message, error.hint)
            self.result = RunResult("failed", error.exit_code, self.run_dir, error)
            # A mistake in the input found before the first step: the folder this process made
            # holds nothing but the error, which was reported; it must not become `latest`.
            discard = error.exit_code == EXIT_BAD_INPUT and self.created_dir and not self.trained
        except Exception as exc:  # noqa: BLE001 - any crash becomes a failed event, with the trace in log.txt
            peer = self.peer_failure()
            if peer is not None and self.dir_sink is not None:
                # A collective broke because another rank died: its error is the one to show.
                self.fail_from_peer(peer)
                self.result = RunResult(
                    "failed", EXIT_FAILED, self.run_dir, FinettyError(peer["message"])
                )
                return
            if self.dir_sink is not None:
                with open(self.run_dir / "log.txt", "a", encoding="utf-8") as log:
                    log.write(traceback.format_exc())
            else:
                traceback.print_exc()  # torchrun prefixes it with this rank's number
            if self.dist is not None and distributed.lost_peer(exc):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._fail(
                    "distributed",
                    "A process of the job died",
                    f"Rank {self.rank} lost contact with another rank of the job: {first}",
                    "The job's output names the rank that ended first and why (torchrun's "
                    "summary); a rank killed by the kernel for lack of host memory leaves no "
                    "message of its own. Continue with --resume latest.",
                )
                self.result = RunResult("failed", EXIT_FAILED, self.run_dir, FinettyError(first))
                return
            message = f"{type(exc).__name__}: {exc}"
            self._fail(
                "internal",
                "Unexpected error",
                message,
                f"The full traceback is in {self.run_dir / 'log.txt'}.",
            )
            self.result = RunResult("failed", EXIT_FAILED, self.run_dir, FinettyError(message))
        finally:
            monitor.stop()
            if self.dir_sink is not None:
                self.dir_sink.close()
            self._release_lock()  # after the last write: status.json is final before a resume
            if discard:
                self._discard_run_dir()
            if self.dist is not None:
                ended = self.result is not None and self.result.status != "failed"
                self.unended_ranks = distributed.shutdown(self.dist, clean=ended)

    def _discard_run_dir(self) -> None:
        """Remove the never-trained folder this process made (and its preset's, if now empty)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.run_dir.parent.rmdir()  # only when empty

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def fail_from_peer(self, record: dict[str, Any]) -> None:
        """Report another rank's error as this run's failure, naming the rank."""
        self._fail(
            record.get("kind") or "internal",
            f"Rank {record.get('rank')} failed: {record.get('title') or 'error'}",
            f"rank {record.get('rank')}: {record.get('message')}",
            record.get("hint"),
        )

    def _fail(self, kind: str, title: str, message: str, hint: str | None) -> None:
        if self.dir_sink is None:
            # Not rank 0: rank 0 reads this from the store and reports it with the rank number.
            if self.dist is not None:
                distributed.report_failure(self.dist, kind, title, message, hint)
            self.sink.emit(Failed(kind, title, message, hint, 0, ""))
            return
        step = int(self.dir_sink.status.get("step") or 0)
        self.sink.emit(Failed(kind, title, message, hint, step, str(self.run_dir / "log.txt")))

    def _hardware_monitor(self) -> Any:
        from engine.train.hardware import HardwareMonitor, cuda_peak_mib, visible_gpu_index

        if not distributed.launched_distributed():
            return HardwareMonitor(
                self.sink, interval=self.hardware_interval, peak_mib=cuda_peak_mib
            )
        # Each rank reads its own GPU; the trainer gathers them into one sample on rank 0.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return HardwareMonitor(
            self.sink,
            interval=self.hardware_interval,
            peak_mib=lambda _index: cuda_peak_mib(local_rank),
            devices=[visible_gpu_index(local_rank)],
        )

    def peer_failure(self) -> dict[str, Any] | None:
        """The first error another rank reported, if any (multi-GPU runs)."""
        if self.dist is None:
            return None
        failures = distributed.peer_failures(self.dist)
        return failures[0] if failures else None

    # -- the run itself ------------------------------------------------------------------------
    def _execute(self) -> tuple[Any, dict[str, str]]:
        """The run's steps, in order; each reads the preset through engine.config.derived."""
        from engine.models import loading

        self._place()
        load = model_load(self.preset)
        source = loading.resolve_load(load)  # a path that cannot be a model fails before data
        records = self._load_data()
        loaded = self._load_model(load, source)
        prepared = self._prepare_data(loaded, records)
        model = self._prepare_model(loaded)
        counts = loading.count_parameters(model)  # before the trainer wraps or shards it
        trainer, settings = self._make_trainer(model, prepared, loaded)
        self._announce(trainer, settings, loaded, counts)
        heldout = self._heldout(model, prepared)
        outcome = self._train(trainer, model)
        return outcome, self._finish(model, trainer, outcome, heldout)

    def _place(self) -> None:
        """This process's device and rank, whether the machine can run the preset, and the
        precision it trains in."""
        from engine.config.presets import check_hardware
        from engine.models import loading

        p = self.preset
        self.device = loading.select_device(p.training.use_cpu)
        if distributed.launched_distributed():
            self.sink.emit(StateChanged(state="loading", detail="joining the other processes"))
            self.dist = distributed.init_from_env(use_cpu=self.device != "cuda")
            # Rank 0 made (or was given) the run directory; a sharded checkpoint needs it on all.
            self.run_dir = Path(distributed.broadcast(str(self.run_dir), self.dist))
        cuda = self.device == "cuda"
        check_hardware(p, cuda=cuda)  # the CLI asked already; API callers too
        dtype = str(loading.select_dtype(p.model.dtype, self.device)).removeprefix("torch.")
        self.precision = precision(p.method, dtype, cuda=cuda)
        self.sharded = self.dist is not None and uses_fsdp(p)

    def _load_data(self) -> list[Any]:
        """The dataset's rows, read before the model: a wrong path or a bad row should not
        cost a model load."""
        from engine.data import load_records

        p = self.preset
        self.sink.emit(StateChanged(state="loading", detail=f"dataset {p.dataset.path}"))
        if self.pairs:
            from engine.data.prepare_preference import load_pairs

            return load_pairs(**pair_prep(p)["load"])  # bad rows named here, by row
        if self.grpo:
            return self._load_prompts()
        return load_records(p.dataset.path, p.dataset.split)  # builtin: its split checked

    def _load_model(self, load: ModelLoad, source: Any) -> Any:
        """The base model and tokenizer on this device, with the fused kernels applied."""
        import torch

        from engine.models import loading
        from engine.speed.kernels import apply_fused_kernels

        self.sink.emit(StateChanged(state="loading", detail=f"model {source.display}"))
        loaded = loading.load_model_for(
            load,
            source,
            device=self.device,
            dtype=getattr(torch, self.precision.weights),
            attention=loading.select_attention(load.attention, self.device),
            progress=self._loading_progress,
        )
        self.tokenizer = loaded.tokenizer
        loaded.info["kernels"] = apply_fused_kernels(
            loaded.model, device=self.device, requested=self.preset.training.use_liger_kernel
        )
        return loaded

    def _prepare_data(self, loaded: Any, records: Any) -> Any:
        """The rows tokenised, split and (if asked) packed, announced with their statistics."""
        from engine.data import describe_format, prepare_dataset
        from engine.data.preference import describe_preference_format
        from engine.data.prepare_preference import prepare_pairs

        p = self.preset
        self.sink.emit(StateChanged(state="loading", detail="tokenizing the dataset"))
        if self.pairs:
            prepared = prepare_pairs(loaded.tokenizer, records, **pair_prep(p)["prepare"])
        elif self.grpo:
            from engine.data.prepare_prompts import prepare_prompts

            prepared = prepare_prompts(
                loaded.tokenizer,
                records,
                chat_template=p.dataset.chat_template,
                max_length=p.model.max_seq_length,
                max_completion_length=p.grpo.max_completion_length,
            )
        else:
            prepared = prepare_dataset(loaded.tokenizer, **dataset_prep(p), records=records)
        self.chat_template = prepared.chat_template
        stats = prepared.stats
        if p.dataset.format == "auto":
            from engine.data.prompts import describe_prompt_format

            describe = (
                describe_preference_format
                if self.pairs
                else describe_prompt_format
                if self.grpo
                else describe_format
            )
            self.sink.emit(
                LogLine(level="info", text=f"Dataset format detected: {describe(stats.format)}.")
            )
        self.sink.emit(
            DatasetStats(
                source=p.dataset.path,
                format=stats.format,
                rows=stats.rows,
                train_rows=stats.train_rows,
                val_rows=stats.val_rows,
                tokens=stats.tokens,
                trained_tokens=stats.trained_tokens,
                max_length=stats.max_length,
                truncated=stats.truncated,
                max_seq_length=stats.max_seq_length,
                mean_length=stats.mean_length,
                length_histogram=[list(pair) for pair in stats.length_histogram],
                chat_template=p.dataset.chat_template,
            )
        )
        if stats.truncated:
            self.sink.emit(
                LogLine(
                    level="warning",
                    text=f"{stats.truncated} of {stats.rows} rows were longer than max_seq_length "
                    f"{p.model.max_seq_length} and were truncated.",
                )
            )
        return prepared

    def _prepare_model(self, loaded: Any) -> Any:
        """The loaded model made trainable (adapters or full) and put on the fast path."""
        import torch

        from engine.models.adapters import LoraSettings, prepare_for_training
        from engine.speed.fast_path import apply_fast_path

        p = self.preset
        torch.manual_seed(p.training.seed)  # LoRA initialisation and dropout follow the seed
        model = prepare_for_training(
            loaded.model,
            method=p.method,
            lora=LoraSettings(**p.lora.model_dump()),
            gradient_checkpointing=False,  # engine.speed.fast_path chooses how
        )
        loaded.info["kernels"] += apply_fast_path(
            model,
            device=self.device,
            uses_adapter=p.uses_adapter,
            gradient_checkpointing=p.training.gradient_checkpointing,
            fused_lora=p.training.fused_lora,
            activation_offloading=p.training.activation_offloading,
            sharded=self.sharded,
            cuda_graphs=self._cuda_graphs(),
        )
        if (
            p.dataset.packing
            and self.device == "cuda"
            and p.model.attn_implementation == "auto"
            and loaded.info.get("attention") == "sdpa"
        ):
            from engine.speed import varlen

            varlen.use_for(model)  # packed documents: flash varlen instead of SDPA + a mask
            loaded.info["attention"] = varlen.NAME
            loaded.info["kernels"].append("varlen attention (packed documents)")
        self.model = model
        return model

    def _make_trainer(self, model: Any, prepared: Any, loaded: Any) -> tuple[Any, TrainSettings]:
        """The trainer over the prepared data, resumed from the newest usable checkpoint when
        resuming."""
        import torch

        from engine.train.tasks.factory import needs_reference, task_for
        from engine.train.trainer import Trainer

        p = self.preset
        task = self._grpo_task(loaded.tokenizer) if self.grpo else task_for(p)
        micro = self._auto_micro_batch() if auto_micro_batch(p) else micro_batch(p)
        autocast = self.precision.autocast
        settings = train_settings(
            p,
            micro_batch=micro,
            device=self.device,
            amp_dtype=getattr(torch, autocast) if autocast else None,
            use_grad_scaler=self.precision.grad_scaler,
            pad_token_id=loaded.tokenizer.pad_token_id,
            sharded=self.sharded,
        )
        self._settings = settings
        train, val = prepared.train, prepared.val
        if needs_reference(task):
            train, val = self._reference(model, train, val, settings)
        trainer = Trainer(
            model,
            train,
            val,
            settings,
            sink=self.sink,
            control=self.control,
            checkpoint_dir=self.run_dir / "checkpoints",
            is_adapter=p.uses_adapter,
            dist=self.dist,
            hardware=self._monitor.sample if self.dist is not None else None,
            hardware_interval=self.hardware_interval,
            task=task,
        )
        if self.resuming:
            checkpoint = find_resume_checkpoint(self.run_dir, self.sink, trainer.resume_from)
            self.sink.emit(
                LogLine(
                    level="info",
                    text=f"Resumed from {checkpoint.name} (step {trainer.state.step}).",
                )
            )
        return trainer, settings

    def _load_prompts(self) -> Any:
        """GRPO's prompts, its settings checked and its rewards loaded: a bad row, a reward
        file that does not load or a setting this loop cannot train fails before the weights."""
        from engine.data.prompts import load_prompts
        from engine.train.tasks.grpo import GrpoSettings, check_settings
        from engine.train.tasks.rewards import load_rewards

        p = self.preset
        settings = GrpoSettings.from_section(p.grpo)
        check_settings(settings, uses_adapter=p.uses_adapter, sharded=self.sharded)
        self._rewards = load_rewards(p.grpo.rewards)
        return load_prompts(p.dataset.path, p.dataset.split, max_rows=p.dataset.max_rows)

    def _grpo_task(self, tokenizer: Any) -> Any:
        from engine.train.tasks.grpo import GrpoSettings, GrpoTask

        eos = {tokenizer.eos_token_id} | set(_ids(getattr(self.model, "generation_config", None)))
        return GrpoTask(
            GrpoSettings.from_section(self.preset.grpo),
            self._rewards,
            eos_token_ids=sorted(i for i in eos if i is not None),
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            should_stop=self._should_stop,
            warn=lambda text: self.sink.emit(LogLine(level="warning", text=text)),
        )

    def _announce(
        self, trainer: Any, settings: TrainSettings, loaded: Any, counts: tuple[int, int]
    ) -> None:
        """RunStarted: from here on the run directory holds a run."""
        p = self.preset
        total, trainable = counts
        self.trained = True
        self.sink.emit(
            RunStarted(
                run_dir=str(self.run_dir),
                name=p.name,
                config=p.model_dump(mode="json"),
                model=loaded.info,
                total_params=total,
                trainable_params=trainable,
                trainable_percent=100.0 * trainable / max(total, 1),
                total_steps=trainer.total_steps,
                num_epochs=p.training.num_train_epochs,
                global_batch_size=settings.micro_batch * settings.grad_accum * trainer.world,
                resumed_from_step=trainer.state.step,
                precision=self.precision.label,
                device=self.device,
                pid=os.getpid(),
                world_size=trainer.world,
                task=task_label(p),
            )
        )

    @property
    def _main(self) -> bool:
        """This process is rank 0 of the job (or the only one)."""
        return self.dist is None or self.dist.is_main

    def _heldout(self, model: Any, prepared: Any) -> Heldout:
        """The held-out sets scored before training (not again on a resume): the built-in
        dataset's questions by exact match, and a preference run's held-out pairs by
        preference accuracy; empty where there are none."""
        p = self.preset
        # Rank 0 alone scores them, which cannot run over weights sharded across the ranks.
        alone = self._main and not self.sharded
        heldout = Heldout(
            questions=builtin_data.generate("heldout")
            if p.dataset.path == BUILTIN_DATASET and p.training.eval_exact_match and alone
            else [],
            pairs=list(getattr(prepared, "heldout", [])) if alone else [],
        )
        self.control.check_abort()
        if not self.resuming:
            self._score_heldout(model, heldout, "before")
        return heldout

    def _score_heldout(self, model: Any, heldout: Heldout, stage: str) -> None:
        if heldout.pairs:
            self._preference_accuracy(model, heldout.pairs, stage)
        if heldout.questions:
            self._exact_match(model, heldout.questions, stage)

    def _reference(
        self, model: Any, train: list[Any], val: list[Any], settings: TrainSettings
    ) -> tuple[list[Any], list[Any]]:
        """The pairs with the reference's log-probs: the starting weights', scored once and
        cached in the run directory (engine.train.tasks.pair_scores)."""
        from engine.train.tasks.pair_scores import with_reference

        self.sink.emit(StateChanged(state="evaluating", detail="reference log-probs"))
        train, val, cached = with_reference(
            model,
            train,
            val,
            cache_dir=self.run_dir if self.dir_sink is not None else None,
            weights=reference_weights(self.preset),
            emit=self.sink.emit,
            should_stop=self._should_stop,
            between=self.control.check_abort,
            ld_alpha=self.preset.preference.ld_alpha,
            **self._scoring(model, settings),
        )
        if cached:
            text = (
                f"Reference log-probs of {len(train) + len(val)} pairs read from the run directory."
            )
            self.sink.emit(LogLine(level="info", text=text))
        return train, val

    def _scoring(self, model: Any, settings: TrainSettings) -> dict[str, Any]:
        """How pairs are scored without training: the eval batch, on the training's path."""
        from engine.speed.loss import supports_chunked_loss

        return {
            "batch_size": settings.eval_batch,
            "pad_token_id": settings.pad_token_id,
            "device": settings.device,
            "amp_dtype": settings.amp_dtype,
            # FSDP gathers the head in the root module's forward: sharded runs score plainly.
            "chunked": supports_chunked_loss(model) and not self.sharded,
        }

    def _should_stop(self) -> bool:
        """SIGTERM, Ctrl+C, `x`: a scoring pass ends at once."""
        return self.control.stop_requested.is_set() or self.control.aborted.is_set()

    def _preference_accuracy(self, model: Any, pairs: list[Any], stage: str) -> None:
        from engine.train.tasks.pair_scores import accuracy_event

        self.sink.emit(
            StateChanged(state="evaluating", detail=f"preference accuracy {stage} training")
        )
        if self._settings is None:
            raise RuntimeError("preference accuracy is scored once the trainer's settings exist")
        event = accuracy_event(
            model,
            pairs,
            stage,
            emit=self.sink.emit,
            should_stop=self._should_stop,
            **self._scoring(model, self._settings),
        )
        self._record_heldout(event, "preference_accuracy", "Preference accuracy", stage)

    def _train(self, trainer: Any, model: Any) -> Any:
        """The training loop, to its end or a stop."""
        self.control.check_abort()
        self.sink.emit(StateChanged(state="training"))
        if self.dist is not None:
            self._monitor.publish = False  # the trainer gathers every rank's sample from here on
        # The model, the tokenised data and (in the TUI) the widgets live until the end: out of
        # the collector's full passes, which the training thread would otherwise pay for.
        gc.freeze()
        outcome = trainer.run()
        self._report_graphs(model)
        return outcome

    def _finish(self, model: Any, trainer: Any, outcome: Any, heldout: Heldout) -> dict[str, str]:
        """The final model of a finished run, and exact match after training; the paths written."""
        paths = {"run_dir": str(self.run_dir)}
        if outcome.status == "finished" and self.sharded:
            from engine.parallel.sharded import full_state_dict

            state = full_state_dict(model)  # a collective: every rank takes part
            if self._main:
                paths["final"] = str(self._save_final(model, state))
        elif outcome.status == "finished" and self._main:
            paths["final"] = str(self._save_final_or_checkpoint(model, trainer))
            self._score_heldout(model, heldout, "after")
        return paths

    def _loading_progress(self, done: int, total: int, elapsed: float) -> None:
        """The model's weight files read so far, as a Progress event in MiB with an ETA."""
        eta = elapsed / done * (total - done) if done > 0 else None
        self.sink.emit(
            Progress(
                task="loading model weights",
                done=round(done / 2**20, 1),
                total=max(1, round(total / 2**20)),
                unit="MiB",
                elapsed_s=round(elapsed, 2),
                eta_s=None if eta is None else round(eta, 1),
            )
        )

    def _cuda_graphs(self) -> bool | None:
        """training.cuda_graphs for this process (engine.config.derived.graphs_wanted), with a
        warning where a multi-GPU run turns an asked-for true off."""
        p = self.preset
        wanted = p.training.cuda_graphs
        if wanted and self.dist is not None:
            self.sink.emit(
                LogLine(
                    level="warning",
                    text="training.cuda_graphs is for one GPU: it is off for this multi-GPU run.",
                )
            )
        return graphs_wanted(
            wanted,
            cuda=self.device == "cuda",
            uses_adapter=p.uses_adapter,
            distributed=self.dist is not None,
        )

    def _report_graphs(self, model: Any) -> None:
        from engine.speed.layer_checkpoint import graphs_of

        graphs = graphs_of(model)
        if graphs is None:
            return
        if graphs.failure is not None:
            text = (
                f"CUDA graphs were switched off ({graphs.failure}); the layers ran eagerly, "
                "with the same results. Set training.cuda_graphs: false to skip the attempt."
            )
            self.sink.emit(LogLine(level="warning", text=text))
        elif graphs.captured:
            self.sink.emit(
                LogLine(level="info", text=f"CUDA graphs: {graphs.captured} layer graphs replayed.")
            )

    def _auto_micro_batch(self) -> int:
        """The estimator's largest micro-batch that fits this GPU; out-of-memory halves it later."""
        from engine.plan.estimate import recommend_micro_batch
        from engine.plan.gpus import detect_gpus, spec_for

        p = self.preset
        detected = detect_gpus()
        if not uses_gpu(p, gpu_present=bool(detected)):
            return micro_batch(p)  # nothing to size against
        micro = micro_batch(p, lambda: recommend_micro_batch(p, spec_for(detected[0])))
        self.sink.emit(
            LogLine(level="info", text=f"per_device_train_batch_size auto: starting at {micro}.")
        )
        return micro

    def _exact_match(self, model: Any, heldout: list, stage: str) -> None:
        from engine.train.evaluate import exact_match

        self.sink.emit(StateChanged(state="evaluating", detail=f"exact match {stage} training"))
        event = exact_match(
            model,
            self.tokenizer,
            heldout,
            stage=stage,
            chat_template=self.chat_template,
            progress=self.sink.emit,
            should_stop=self._should_stop,
        )
        self._record_heldout(event, "exact_match", "Exact match", stage)

    def _record_heldout(self, event: Any, key: str, label: str, stage: str) -> None:
        """A held-out score's event (None: a stop cut the scoring short, which is logged) kept
        for the run's result under ``<key>_<stage>``."""
        if event is None:
            text = f"{label} {stage} training skipped: a stop was requested."
            self.sink.emit(LogLine(level="info", text=text))
            return
        self._accuracy[f"{key}_{stage}"] = event.accuracy
        self.sink.emit(event)

    def _save_final_or_checkpoint(self, model: Any, trainer: Any) -> Path:
        """The final model; if it cannot be written, at least a checkpoint of the last step,
        so that a resume after freeing space saves the final model without training again."""
        from engine.runs.checkpoint import complete_checkpoints

        try:
            return self._write_final(model)
        except Exception as exc:
            if not is_write_failure(exc):
                raise
            failure = self._final_failure(exc)
        done = complete_checkpoints(self.run_dir / "checkpoints")
        step = trainer.state.step
        if done and done[-1].name == f"checkpoint-{step}":
            saved: Path | None = done[-1]  # the last step is in a checkpoint already
        else:
            try:
                saved = trainer.save("final model not saved")
            except TrainingError:
                saved = None
        df = f"Free disk space (check with `df -h {self.run_dir}`)"
        if saved is not None:
            raise TrainingError(
                f"{failure} The last step is safe in {saved}.",
                hint=f"{df}, then `finetty train --resume {self.run_dir}` saves the final model "
                "without training again.",
                title="Final model not saved",
            )
        lost = f"the steps after {done[-1].name}" if done else f"all {step} steps of this run"
        raise TrainingError(
            f"{failure} No checkpoint of step {step} could be written either: {lost} are lost.",
            hint=f"{df}; then "
            + (
                f"`finetty train --resume {self.run_dir}` continues from {done[-1].name}."
                if done
                else "start the run again."
            ),
            title="Final model not saved",
        )

    def _final_failure(self, exc: BaseException) -> str:
        from engine.runs.checkpoint import describe_os_error

        return (
            f"Could not write the final model in {self.run_dir / 'final'}: "
            f"{describe_os_error(exc)}. Nothing half-written was left under that name."
        )

    def _save_final(self, model: Any, state_dict: dict[str, Any] | None = None) -> Path:
        """The final model of a sharded run (``state_dict`` gathered from the ranks)."""
        try:
            return self._write_final(model, state_dict)
        except Exception as exc:
            if not is_write_failure(exc):
                raise
            raise TrainingError(
                f"{self._final_failure(exc)} The checkpoints in {self.run_dir / 'checkpoints'} "
                "are intact.",
                hint=f"Free disk space (check with `df -h {self.run_dir}`), then "
                f"`finetty train --resume {self.run_dir}` continues from the last checkpoint.",
                title="Final model not saved",
            ) from None

    def _write_final(self, model: Any, state_dict: dict[str, Any] | None = None) -> Path:
        """Written under ``.tmp-final`` and renamed, like a checkpoint: a full disk leaves no
        half-written model under the final name, and an existing ``final/`` is never replaced.
        A failed write removes the staging folder and raises again."""
        target = self.run_dir / "final"
        staging = self.run_dir / ".tmp-final"
        if target.exists():
            raise RunDirError(
                f"{target} exists already; finetty never overwrites a run's final model.",
                hint="Move it away to keep it, or train further in a new run.",
            )
        from engine.runs.checkpoint import require_finite

        trained = (p for p in model.named_parameters() if p[1].requires_grad)
        require_finite(state_dict.items() if state_dict else trained, f"The final model ({target})")
        self.sink.emit(StateChanged(state="saving", detail="final model"))
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash during an earlier save
        try:
            model.save_pretrained(staging, state_dict=state_dict)
            self.tokenizer.chat_template = self.chat_template
            self.tokenizer.save_pretrained(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


def _ids(generation_config: Any) -> list[int]:
    """The end-of-sequence ids a model's generation config lists (an int, a list, or none)."""
    value = getattr(generation_config, "eos_token_id", None)
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def is_write_failure(exc: BaseException) -> bool:
    """Whether a save failed for lack of room or rights (a full disk, ENOSPC; a file over the
    size limit, EFBIG; a read-only remount) rather than a bug: OSError from Python,
    SafetensorError from safetensors, RuntimeError from torch's writer, and a bare Exception
    carrying "(os error N)" from the tokenizers library."""
    from safetensors import SafetensorError

    if isinstance(exc, OSError | SafetensorError | RuntimeError):
        return True
    return type(exc) is Exception and "(os error" in str(exc)
