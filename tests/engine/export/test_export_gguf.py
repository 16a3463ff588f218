"""GGUF export: architectures, the embedded model round trip, llama.cpp, Ollama Modelfiles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from engine.export import export_run, ollama
from engine.export.gguf_writer import plan_gguf, write_gguf
from engine.export.verify import build_reference, verify_gguf_transformers
from tests.engine.export.test_export import make_run

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 128}),  # transformers reads 128 only
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
}


def tiny_family(folder: Path, family: str, tokenizer_dir: Path) -> Path:
    import transformers
    from transformers import AutoTokenizer

    config_name, model_name, extra = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **extra,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():  # random norms, so a wrong "1 + w" or permutation shows in the logits
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0 if family.startswith("gemma") else 1.0, 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_writes_and_reads_back(family: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_family(tmp_path / family, family, tiny_model_dir)
    plan = plan_gguf(folder)
    path = tmp_path / f"{family}.gguf"
    write_gguf(plan, path, "f16", name=family)  # "mistral" must not steer the reader (display_name)
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert arch == {"mistral": "llama"}.get(family, family)
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{%")
    names = {tensor.name for tensor in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    if family == "gemma":
        return  # transformers 5 cannot read gemma (v1) GGUF back; tensor names checked above
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reference = build_reference(model, AutoTokenizer.from_pretrained(folder))
    check = verify_gguf_transformers(path, reference, "f16")
    assert check.passed, check.describe()


@pytest.fixture(scope="module")
def embedded_export(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path):
    """SmolLM2-135M + a perturbed LoRA, exported once as F16 and Q8_0 GGUF with Modelfiles."""
    root = tmp_path_factory.mktemp("embedded")
    run = make_run(root / "runs", embedded_dir, name="smol")
    return export_run(run, ["gguf"], quants=["f16", "q8_0"], out=root / "out", ollama_files=True)


def test_embedded_gguf_f16_and_q8_0_round_trip(embedded_export) -> None:
    ggufs = {item.path.name: item for item in embedded_export.items if item.kind == "gguf"}
    assert set(ggufs) == {"smol-f16.gguf", "smol-q8_0.gguf"}
    f16, q8 = ggufs["smol-f16.gguf"], ggufs["smol-q8_0.gguf"]
    assert 250e6 < f16.size < 290e6 and 130e6 < q8.size < 160e6
    assert "same greedy continuation" in f16.checks[0] and "ok" in f16.checks[0]
    # Q8_0 moves logits by up to ~2 here, so a near-tie in the continuation may flip (stated rule).
    assert ": ok," in q8.checks[0] and "greedy continuation" in q8.checks[0]
    if HAS_LLAMA_CPP:
        assert any(check.startswith("llama.cpp: loads") for check in f16.checks)
    print("\n".join(check for item in embedded_export.items for check in item.checks))
    leftovers = [p for p in f16.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_embedded_modelfile(embedded_export) -> None:
    modelfiles = [item for item in embedded_export.items if item.kind == "modelfile"]
    assert len(modelfiles) == 2
    item = modelfiles[0]
    text = item.path.read_text()
    assert "FROM ./smol-f16.gguf" in text and "<|im_start|>{{ .Role }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert item.command == f"ollama create smol:f16 -f {item.path}"


@pytest.mark.parametrize(
    ("template", "family", "marker"),
    [
        ("{{ '<|start_header_id|>' }}", "llama-3", "<|eot_id|>"),
        ("{{ '[INST] ' }}", "mistral", "[/INST]"),
        ("{{ '<start_of_turn>user' }}", "gemma", "<start_of_turn>model"),
        ("{{ '<|im_start|>' }}", "chatml", "<|im_start|>assistant"),
    ],
)
def test_modelfile_templates(template: str, family: str, marker: str) -> None:
    assert ollama.detect_family(template) == family
    text = ollama.modelfile_text("m.gguf", template, parameters={"temperature": 0.2})
    assert "FROM ./m.gguf" in text and marker in text and "PARAMETER temperature 0.2" in text
    assert text.count('PARAMETER stop "') == 2
    assert "\nTEMPLATE" not in ollama.modelfile_text("m.gguf", "{{ messages }}")


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_k_quant_through_llama_cpp_loads_and_generates(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = make_run(tmp_path / "runs", tiny_model_dir)
    report = export_run(run, ["gguf"], quants=["q4_k_m"], out=tmp_path / "out")
    (item,) = report.items
    assert item.path.name == "tiny-q4_k_m.gguf" and item.size > 0
    assert any(check.startswith("llama.cpp: loads, same prompt tokens") for check in item.checks)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-q4_k_m.gguf"]


@pytest.mark.parametrize("name", ["mistral-demo", "mistral"])
def test_run_named_mistral_on_a_llama_verifies(
    name: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # transformers reads a llama GGUF whose general.name is "mistral" as a mistral model, then
    # fails the read-back (bundled presets are named mistral-...); the name must not steer it.
    import gguf

    run = make_run(tmp_path / "runs", tiny_model_dir, name=name)
    report = export_run(run, ["gguf"], quants=["f16"], out=tmp_path / "out")
    (item,) = report.items
    assert item.path.name == f"{name}-f16.gguf"
    assert "same greedy continuation" in item.checks[0] and ": ok," in item.checks[0]
    fields = gguf.GGUFReader(item.path).fields
    assert fields["general.finetune"].contents() == name
    assert "mistral" not in fields["general.name"].contents().lower()
