"""Native code and heavy steps of an export run in child processes: a crash, a hang or the
out-of-memory killer there becomes a clear message, removes the unfinished files, and never ends
the caller. Crashes are made deterministic with the documented FINETTY_TEST_FAULT hook
(engine.export.native), which kills the real child at the point named."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.export import native, verify
from engine.export.child import export_in_child
from engine.export.files import ExportError, ExportFailed, VerificationError
from tests.engine.export.test_export import make_run

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-"))


def test_export_killed_during_the_merge_is_reported_and_cleaned(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".partial-someone-else").write_text("not ours")  # another export's: must stay
    monkeypatch.setenv(native.FAULT_ENV, "merged-save:SIGKILL")  # what the OOM killer does
    seen: list[str] = []
    with pytest.raises(ExportFailed) as caught:
        export_in_child(run_dir, ["merged"], out=out, progress=lambda m, f=None: seen.append(m))
    message = str(caught.value)
    assert "SIGKILL (signal 9" in message and "out-of-memory" in message
    assert "merged: saving safetensors" in message  # the phase it died in
    assert "dmesg" in (caught.value.hint or "")
    assert partials(out) == [".partial-someone-else"]
    assert not (out / "merged").exists()
    assert "merged: saving safetensors" in seen  # progress was relayed from the child


def test_export_in_child_returns_the_same_report(run_dir: Path, tmp_path: Path) -> None:
    report = export_in_child(run_dir, ["adapter"], out=tmp_path / "out")
    (item,) = report.items
    assert item.kind == "adapter" and item.path == tmp_path / "out" / "adapter" and item.size > 0
    assert item.checks[0].startswith("loads with PeftModel.from_pretrained")
    assert partials(tmp_path / "out") == []


def test_typed_errors_cross_the_process_boundary(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "out" / "adapter").mkdir(parents=True)
    with pytest.raises(ExportError) as caught:
        export_in_child(run_dir, ["adapter"], out=tmp_path / "out")
    assert caught.value.exit_code == 2 and "already exists" in caught.value.message
    assert "--force" in (caught.value.hint or "")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return verify.build_reference(model, tokenizer), tokenizer


def test_llama_cpp_crash_is_a_clear_failure(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, tokenizer = reference
    staging = tmp_path / ".partial-tiny-q8_0.gguf-abc.gguf"
    staging.write_bytes(b"GGUF")
    monkeypatch.setenv(native.FAULT_ENV, "llama-verify:SIGSEGV")
    seen: list[str] = []
    with pytest.raises(ExportFailed) as caught:
        verify.verify_llama_cpp(
            staging, ref, tokenizer, lambda m, f=None: seen.append(m), name="tiny-q8_0.gguf"
        )
    message = caught.value.message
    assert "llama.cpp crashed with SIGSEGV (signal 11: an invalid memory access" in message
    assert "tiny-q8_0.gguf" in message and "not kept" in message and ".partial-*" in message
    assert "finetty and any training run are unaffected" in message
    assert "n_batch=1" in (caught.value.hint or "")  # how to check it by hand
    assert any("n_batch=1" in m for m in seen)  # it tried the single-token batch too
    assert caught.value.exit_code == 1


def test_llama_cpp_hang_is_stopped_at_the_timeout(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, tokenizer = reference
    staging = tmp_path / "x.gguf"
    staging.write_bytes(b"GGUF")
    monkeypatch.setenv(native.FAULT_ENV, "llama-verify:hang")
    monkeypatch.setattr(verify, "VERIFY_TIMEOUT", (3.0, 0.0))
    seen: list[str] = []
    with pytest.raises(ExportFailed) as caught:
        verify.verify_llama_cpp(staging, ref, tokenizer, lambda m, f=None: seen.append(m))
    assert "did not finish verifying x.gguf within 3 s; it was stopped" in caught.value.message
    assert any(m.endswith("(2s)") for m in seen)  # the wait shows its elapsed time


def test_quantize_crash_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.export import llama_cpp

    source = tmp_path / "f16.gguf"
    source.write_bytes(b"GGUF")
    monkeypatch.setenv(native.FAULT_ENV, "llama-quantize:SIGABRT")
    with pytest.raises(ExportFailed) as caught:
        llama_cpp.quantize(
            llama_cpp.Quantizer("python", sys.executable), source, tmp_path / "q.gguf", "q4_k_m"
        )
    assert "crashed with SIGABRT (signal 6: the native code aborted itself)" in str(caught.value)


def test_exit_text_names_the_signal() -> None:
    assert native.exit_text(-11).startswith("SIGSEGV (signal 11")
    assert native.exit_text(3) == "exit status 3"


# -- the CLI: `finetty export` as a user runs it -------------------------------------------------
def finetty(
    *argv: str, prefix: tuple[str, ...] = (), fault: str | None = None
) -> subprocess.CompletedProcess:
    code = "import sys; from tui.cli import entry; sys.argv[0] = 'finetty'; entry()"
    env = {k: v for k, v in os.environ.items() if k != native.FAULT_ENV} | {"COLUMNS": "1000"}
    if fault:
        env[native.FAULT_ENV] = fault
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=env,
    )


def clean(result: subprocess.CompletedProcess, code: int) -> str:
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert "Traceback" not in text
    return text


def test_out_is_an_existing_file(run_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    text = clean(finetty("export", str(run_dir), "--format", "adapter", "--out", str(target)), 2)
    assert "is a file, not a folder" in text and target.read_text() == "keep me"


def test_out_under_proc(run_dir: Path) -> None:
    text = clean(finetty("export", str(run_dir), "--format", "adapter", "--out", "/proc/x"), 2)
    assert "Cannot write the export to /proc/x" in text


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a read-only mount")
def test_out_on_a_read_only_filesystem(run_dir: Path, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no mount namespace here")
    shell = f'mount -t tmpfs -o ro none {mount} && exec "$@"'
    result = finetty(
        "export",
        str(run_dir),
        "--format",
        "adapter",
        "--out",
        str(mount / "x"),
        prefix=("unshare", "-m", "sh", "-c", shell, "sh"),
    )
    assert "Read-only file system" in clean(result, 2)


def test_quant_list_with_no_type_is_refused(run_dir: Path, tmp_path: Path) -> None:
    argv = ("export", str(run_dir), "--format", "gguf", "--quant", ",", "--out", str(tmp_path))
    text = clean(finetty(*argv), 2)
    assert "no GGUF type" in text and "--quant q8_0" in text
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_dead_export_without_a_traceback(run_dir: Path, tmp_path: Path) -> None:
    argv = ("export", str(run_dir), "--format", "merged", "--out", str(tmp_path))
    result = finetty(*argv, fault="merged-save:SIGSEGV")
    text = clean(result, 1)
    assert "SIGSEGV" in text and partials(tmp_path) == []


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_gguf_export_survives_a_llama_cpp_crash(run_dir: Path, tmp_path: Path) -> None:
    argv = ("export", str(run_dir), "--format", "gguf", "--quant", "f16", "--out", str(tmp_path))
    result = finetty(*argv, fault="llama-verify:SIGSEGV")
    text = clean(result, 1)
    assert "llama.cpp crashed with SIGSEGV" in text
    assert list(tmp_path.iterdir()) == []  # no .partial-*, nothing under the target name


def test_llama_cpp_child_without_an_answer_is_a_failed_check(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, tokenizer = reference
    staging = tmp_path / "x.gguf"
    staging.write_bytes(b"GGUF")
    # Native code printing on stdout and exiting 0 without the JSON answer.
    command = [sys.executable, "-c", "print('ggml_init: something'); print('{broken')"]
    monkeypatch.setattr(native, "llama_generate_command", lambda: command)
    with pytest.raises(VerificationError) as caught:
        verify.verify_llama_cpp(staging, ref, tokenizer)
    assert "ended without an answer" in caught.value.message
