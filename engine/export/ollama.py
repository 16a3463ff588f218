"""An Ollama Modelfile beside a GGUF: FROM, a Go TEMPLATE translated from the chat template, stops.

Ollama templates are Go text/template, not Jinja, so each supported chat format has its
hand-written equivalent. The format is recognised from the Jinja template's own markers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
_LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""
_MISTRAL = """{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] \
{{ if and (eq $i 0) $.System }}{{ $.System }}

{{ end }}{{ .Content }} [/INST]{{- else if eq .Role "assistant" }}{{ .Content }}</s>{{- end }}{{- end }}"""
_GEMMA = """{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}<start_of_turn>user
{{ if and (eq $i 0) $.System }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
"""
# family: (marker in the Jinja template, Go template, stop strings)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "chatml": ("<|im_start|>", _CHATML, ("<|im_start|>", "<|im_end|>")),
    "llama-3": ("<|start_header_id|>", _LLAMA3, ("<|start_header_id|>", "<|eot_id|>")),
    "gemma": ("<start_of_turn>", _GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    "mistral": ("[INST]", _MISTRAL, ("[INST]", "</s>")),
}


def detect_family(chat_template: str | None) -> str | None:
    if not chat_template:
        return None
    for family, (marker, _, _) in FAMILIES.items():
        if marker in chat_template:
            return family
    return None


def default_system(tokenizer: Any, family: str | None) -> str | None:
    """The system prompt the chat template adds when none is given (SmolLM2 has one)."""
    if family != "chatml" or not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    match = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", text, re.S)
    return match.group(1) if match else None


def modelfile_text(
    gguf_name: str,
    chat_template: str | None,
    *,
    system: str | None = None,
    parameters: dict[str, float | int] | None = None,
) -> str:
    family = detect_family(chat_template)
    lines = [
        f"# Written by finetty. Chat format: {family or 'unknown (no TEMPLATE)'}.",
        f"FROM ./{gguf_name}",
    ]
    if family is not None:
        _, template, stops = FAMILIES[family]
        lines.append(f'TEMPLATE """{template}"""')
        lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def generation_parameters(model_dir: Path) -> dict[str, float | int]:
    """Sampling defaults from generation_config.json where the model has them."""
    import json

    params: dict[str, float | int] = {"num_ctx": 2048}
    path = model_dir / "generation_config.json"
    if path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
        ):
            if config.get(theirs) is not None and config.get("do_sample", True):
                params[ours] = config[theirs]
        if config.get("repetition_penalty") not in (None, 1.0):
            params["repeat_penalty"] = config["repetition_penalty"]
    return params


def create_command(name: str, modelfile: Path) -> str:
    return f"ollama create {name} -f {modelfile}"


def ollama_name(run_name: str, quant: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-") or "model"
    return f"{slug}:{quant}"
