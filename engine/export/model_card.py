"""The model card (the repo's README.md) of a pushed run, written from its run directory.

Its YAML front matter follows the hub's model-card metadata: ``base_model`` and ``datasets``
only where they are hub ids (a local path would be a broken link, and the hub rejects it),
``library_name`` (peft for an adapter repo, transformers when the merged model is at its root)
and ``tags``. The body gives what a reader asks first: what was trained on what, how it went
(final and best loss, eval, exact match, read from events.jsonl) and how to run each file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The embedded model is a GGUF copy of a hub model: the card links the original.
EMBEDDED_ORIGINS = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class RunFigures:
    """What events.jsonl says of how the run went; None where the run did not measure it."""

    status: str | None = None
    step: int | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    exact_match: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> event


@dataclass(frozen=True)
class CardFiles:
    """Where the pushed files sit in the repo, as the card's usage sections need them."""

    adapter: str | None = None  # "" for the root, "adapter" for a subfolder
    merged: bool = False  # the merged model is at the root
    ggufs: tuple[str, ...] = ()  # file names, at the root
    modelfiles: tuple[str, ...] = ()


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a hub repo id and is no local path; else None."""
    if not name:
        return None
    name = EMBEDDED_ORIGINS.get(name, name)
    if _HUB_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def read_figures(events_file: Path) -> RunFigures:
    """The last finished event's metrics, the last eval, and exact match by stage."""
    figures = RunFigures()
    try:
        lines = events_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return figures
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a run cut off mid-write leaves a partial last line
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "finished":
            metrics = event.get("metrics") or {}
            figures.status, figures.step = event.get("status"), event.get("step")
            figures.final_loss = metrics.get("final_loss")
            figures.best_loss = metrics.get("best_loss")
            figures.eval_loss = metrics.get("eval_loss", figures.eval_loss)
        elif kind == "eval":
            figures.eval_loss, figures.perplexity = event.get("loss"), event.get("perplexity")
        elif kind == "exact_match":
            figures.exact_match[str(event.get("stage"))] = event
    return figures


def chat_template(final: Path) -> str | None:
    """The chat template the run's tokenizer carries (a .jinja file or tokenizer_config.json)."""
    jinja = final / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((final / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def metadata(preset: Any, files: CardFiles) -> dict[str, Any]:
    """The front matter: hub conventions first, then what finetty adds."""
    data: dict[str, Any] = {}
    base = hub_id(preset.model.name_or_path)
    if base:
        data["base_model"] = base
    if files.merged:
        data["library_name"] = "transformers"
    elif files.adapter is not None:
        data["library_name"] = "peft"
    tags = ["finetty", preset.task, preset.method]
    if files.adapter is not None:
        tags.append("lora")
    if files.ggufs:
        tags.append("gguf")
    data["tags"] = list(dict.fromkeys(tags))
    dataset = hub_id(preset.dataset.path)
    if dataset:
        data["datasets"] = [dataset]
    data["pipeline_tag"] = "text-generation"
    return data


def model_card(
    preset: Any,
    run_dir: Path,
    final: Path,
    repo_id: str,
    files: CardFiles,
    version: str,
) -> str:
    """The README.md text: YAML front matter, then the run, its figures and how to use it."""
    front = yaml.safe_dump(metadata(preset, files), sort_keys=False, allow_unicode=True)
    figures = read_figures(run_dir / "events.jsonl")
    sections = [
        f"# {repo_id.split('/')[-1]}",
        _summary(preset, version),
        "## Training\n\n" + _table(_hyper_parameters(preset)),
        "## Results\n\n" + _results(figures),
        "## Use it\n\n" + _usage(preset, repo_id, files),
    ]
    template = chat_template(final)
    if template:
        sections.append(
            "## Chat template\n\nThe tokenizer carries it (`tokenizer.apply_chat_template`):\n\n"
            f"<details><summary>template</summary>\n\n```jinja\n{template.strip()}\n```\n\n"
            "</details>"
        )
    return f"---\n{front}---\n\n" + "\n\n".join(sections) + "\n"


def local_name(name: str) -> str:
    """A local model or data path as the card shows it: its last part only, because the full
    path names folders of this machine (a user name, a project) that a public card should not."""
    if name.startswith(("builtin:", "embedded:")):
        return f"`{name}`"
    return f"`{Path(name).name or name}` (local)"


def _summary(preset: Any, version: str) -> str:
    base = hub_id(preset.model.name_or_path)
    base_text = (
        f"[{base}](https://huggingface.co/{base})"
        if base
        else local_name(preset.model.name_or_path)
    )
    dataset = hub_id(preset.dataset.path)
    data_text = (
        f"[{dataset}](https://huggingface.co/datasets/{dataset})"
        if dataset
        else local_name(preset.dataset.path)
    )
    method = {"lora": "LoRA", "qlora": "QLoRA (4-bit base)", "full": "full fine-tuning"}
    return (
        f"{preset.task.upper()} of {base_text} with {method[preset.method]} on {data_text}, "
        f"trained and exported by finetty {version}."
    )


def _hyper_parameters(preset: Any) -> list[tuple[str, Any]]:
    t = preset.training
    rows: list[tuple[str, Any]] = [
        ("task", preset.task),
        ("method", preset.method),
        ("learning rate", t.learning_rate),
        ("scheduler", t.lr_scheduler_type),
        ("epochs", t.num_train_epochs if t.max_steps < 0 else f"max_steps {t.max_steps}"),
        ("batch size per device", t.per_device_train_batch_size),
        ("gradient accumulation", t.gradient_accumulation_steps),
        ("warmup", f"{t.warmup_steps} steps" if t.warmup_steps else f"ratio {t.warmup_ratio}"),
        ("optimizer", t.optim),
        ("weight decay", t.weight_decay),
        ("max sequence length", preset.model.max_seq_length),
        ("seed", t.seed),
    ]
    if preset.method != "full":
        lora = preset.lora
        targets = lora.target_modules
        rows += [
            ("LoRA r / alpha / dropout", f"{lora.r} / {lora.lora_alpha} / {lora.lora_dropout}"),
            ("LoRA targets", targets if isinstance(targets, str) else ", ".join(targets)),
        ]
    return rows


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _results(figures: RunFigures) -> str:
    rows: list[tuple[str, Any]] = []
    if figures.status:
        rows.append(("status", f"{figures.status} at step {figures.step}"))
    for key, value in (
        ("final loss", figures.final_loss),
        ("best loss", figures.best_loss),
        ("eval loss", figures.eval_loss),
        ("eval perplexity", figures.perplexity),
    ):
        if value is not None:
            rows.append((key, f"{value:.4f}"))
    for stage in ("before", "after"):
        event = figures.exact_match.get(stage)
        if event:
            rows.append(
                (
                    f"exact match {stage} training",
                    f"{event['accuracy']:.1%} ({event['correct']}/{event['total']})",
                )
            )
    if not rows:
        return "The run recorded no figures (its events.jsonl has no finished event)."
    return _table(rows)


def _usage(preset: Any, repo_id: str, files: CardFiles) -> str:
    parts = []
    if files.ggufs:
        first = files.ggufs[0]
        quant = first.rsplit("-", 1)[-1].removesuffix(".gguf").upper()
        listing = "\n".join(f"- `{name}`" for name in files.ggufs)
        parts.append(
            f"GGUF files (one per quantization):\n\n{listing}\n\n"
            f"**llama.cpp**\n\n```bash\nllama-cli -hf {repo_id}:{quant}\n"
            f"# or, with the file downloaded:\nllama-cli -m {first} -cnv\n```\n\n"
            f"**Ollama**\n\n```bash\nollama run hf.co/{repo_id}:{quant}\n```"
        )
        if files.modelfiles:
            parts[-1] += (
                f"\n\nOr with the Modelfile beside the GGUF (chat template and stops set): "
                f"`ollama create {repo_id.split('/')[-1].lower()} -f {files.modelfiles[0]}`"
            )
    if files.merged:
        parts.append(
            "**transformers** (the merged 16-bit model)\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n```'
        )
    if files.adapter is not None:
        base = hub_id(preset.model.name_or_path) or "<the base model>"
        sub = f', subfolder="{files.adapter}"' if files.adapter else ""
        parts.append(
            "**transformers + PEFT** (the LoRA adapter on its base)\n\n```python\n"
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
            f'model = PeftModel.from_pretrained(base, "{repo_id}"{sub})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{sub})\n```'
        )
    return "\n\n".join(parts)
