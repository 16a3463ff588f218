"""Export on a tiny random Llama: adapter, merged, guards (targets, disk, failed checks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from engine.export import ExportError, VerificationError, export_run, verify
from engine.export.gguf_writer import check_architecture


def make_run(root: Path, model_dir: Path, *, name: str = "tiny", method: str = "lora") -> Path:
    """A finished run folder: config.yaml, events.jsonl and final/ (adapter or full model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.config.presets import to_yaml, validate

    run = root / name / "20260101-000000"
    (run / "final").mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method != "full":
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # LoRA B starts at zero: perturb it so the adapter does something
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(run / "final")
    data = {
        "name": name,
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "dataset": {"path": "tests/data/alpaca_small.jsonl"},
        "method": method,
        "lora": {"r": 4, "lora_alpha": 8},
        "training": {"use_cpu": True},
    }
    (run / "config.yaml").write_text(to_yaml(validate(data)), encoding="utf-8")
    # A run that started training (`latest` skips runs that never did).
    (run / "events.jsonl").write_text('{"type": "run_started", "v": 1}\n', encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), tiny_model_dir)


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        return model(ids).logits[0]


def test_adapter_loads_with_plain_peft(
    tiny_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = export_run(tiny_run, ["adapter"], out=tmp_path)
    folder = tmp_path / "adapter"
    assert [item.path for item in report.items] == [folder] and report.items[0].size > 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = logits(base, tokenizer)
    tuned = logits(PeftModel.from_pretrained(base, str(folder)), tokenizer)
    assert (tuned - plain).abs().max() > 1e-3  # the adapter is live, not a no-op
    assert "<|im_start|>" in tokenizer.chat_template
    assert "PeftModel.from_pretrained" in (folder / "README.md").read_text()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_merged_loads_with_plain_transformers_and_matches(
    tiny_run: Path, tiny_model_dir: Path, tmp_path: Path, dtype: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = export_run(tiny_run, ["merged"], out=tmp_path, dtype=dtype)
    folder = tmp_path / "merged"
    assert "ok" in report.items[0].checks[0]
    assert list(folder.glob("*.safetensors")) and (folder / "generation_config.json").is_file()
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert merged.dtype == torch_dtype and not hasattr(merged, "peft_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = logits(PeftModel.from_pretrained(base, str(tiny_run / "final")), tokenizer)
    # 16-bit weights against the fp32 base + adapter: one rounding of each weight.
    diff = (logits(merged.float(), tokenizer) - reference).abs().max().item()
    assert diff < {"fp16": 0.05, "bf16": 0.3}[dtype]


def test_existing_target_is_kept_without_force(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "mine.txt").write_text("keep")
    with pytest.raises(ExportError) as caught:
        export_run(tiny_run, ["merged"], out=tmp_path)
    assert caught.value.exit_code == 2 and "--force" in (caught.value.hint or "")
    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["mine.txt"]
    export_run(tiny_run, ["merged"], out=tmp_path, force=True)
    assert not (tmp_path / "merged" / "mine.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_disk_space_is_checked_before_writing(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024))
    with pytest.raises(ExportError, match="Not enough disk space") as caught:
        export_run(tiny_run, ["merged"], out=tmp_path / "out")
    assert caught.value.exit_code == 2
    assert not any((tmp_path / "out").iterdir())


def test_failed_verification_leaves_no_finished_file(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(verify.TOLERANCES, "merged-float16", -1.0)
    monkeypatch.setitem(verify.TOLERANCES, "gguf-f16", -1.0)
    with pytest.raises(VerificationError, match="FAILED"):
        export_run(tiny_run, ["merged"], out=tmp_path, dtype="fp16")
    monkeypatch.setitem(verify.TOLERANCES, "merged-float16", 1.0)
    with pytest.raises(VerificationError):
        export_run(tiny_run, ["gguf"], quants=["f16"], out=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no target, no staging leftovers


def test_full_run_has_no_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = make_run(tmp_path / "runs", tiny_model_dir, method="full")
    with pytest.raises(ExportError, match="no adapter"):
        export_run(run, ["adapter"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_fails_before_work(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from engine.models.embedded import ensure_converted

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=49152)).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(ensure_converted("smollm2-135m-instruct")).save_pretrained(folder)
    run = make_run(tmp_path / "runs", folder, method="full")
    with pytest.raises(ExportError, match="does not support the 'gpt2' architecture") as caught:
        export_run(run, ["merged", "gguf"], out=tmp_path / "out")
    assert caught.value.exit_code == 2 and "Supported: llama" in (caught.value.hint or "")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="RoPE scaling 'yarn'"):
        check_architecture({"model_type": "qwen2", "rope_scaling": {"rope_type": "yarn"}})


def test_k_quant_without_llama_cpp_says_how_to_get_it(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from engine.export import llama_cpp

    real_find_spec = importlib.util.find_spec
    monkeypatch.delenv(llama_cpp.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )
    with pytest.raises(ExportError, match=r"needs llama\.cpp's quantizer") as caught:
        export_run(tiny_run, ["gguf"], quants=["q8_0", "q4_k_m"], out=tmp_path / "out")
    assert "pip install llama-cpp-python" in (caught.value.hint or "")
    assert not (tmp_path / "out").exists()  # refused before any work
    monkeypatch.setenv(llama_cpp.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(ExportError, match="not an executable"):
        llama_cpp.find_quantizer()
