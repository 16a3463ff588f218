"""Round-trip checks: every exported model must reproduce its reference before it is reported.

A reference is a few chat prompts, the greedy continuation the source model produces for each,
and its logits over prompt + continuation. A candidate passes when its greedy continuation is
the same (checked teacher-forced: its argmax at every continuation position) and its logits are
within the stated tolerance. Tolerances are max |Δlogit| over all positions and the vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.export.files import VerificationError

PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
)
NEW_TOKENS = 8
# Max |Δlogit| allowed, with the reason for each size.
TOLERANCES = {
    "merged-float32": 1e-3,  # same arithmetic up to summation order
    "merged-float16": 1.0,  # 16-bit compute on both sides: measured 0.40 on SmolLM2-135M
    "merged-bfloat16": 4.0,  # bf16 compute on both sides: measured 1.68 on SmolLM2-135M
    "gguf-f16": 0.25,  # measured 0.04 on SmolLM2-135M
    "gguf-bf16": 1.5,
    "gguf-q8_0": 3.0,  # measured ~1.6 on SmolLM2-135M
}
# GGUF architectures transformers 5 can read back (it has no reader for gemma v1).
TRANSFORMERS_READS = ("llama", "qwen2", "qwen3", "gemma2")
# Q8_0 may flip near-ties, so it needs this share of top-1 agreement instead of exact greedy.
Q8_0_MIN_AGREEMENT = 0.9


@dataclass
class Reference:
    ids: list[Any]  # one [1, n] LongTensor per prompt: prompt + greedy continuation
    prompt_lengths: list[int]
    logits: list[Any]  # float32 [n, vocab] per prompt


@dataclass
class LogitCheck:
    what: str
    max_abs: float
    tolerance: float
    top1_agreement: float
    greedy_equal: bool
    passed: bool
    near_tie_flips: int = 0  # continuation flips where the reference's top-2 margin <= 2 max|Δ|
    finite: bool = True  # every logit of the candidate is a number

    def describe(self) -> str:
        if not self.finite:
            return f"{self.what}: FAILED, its logits hold NaN or infinite values"
        verdict = "ok" if self.passed else "FAILED"
        greedy = "same greedy continuation" if self.greedy_equal else "greedy continuation differs"
        if self.near_tie_flips:
            greedy += f" only at {self.near_tie_flips} near-tie(s)"
        return (
            f"{self.what}: {verdict}, max |Δlogit| {self.max_abs:.4f} (tolerance {self.tolerance}), "
            f"top-1 agreement {self.top1_agreement:.1%}, {greedy}"
        )


def encode_prompts(tokenizer: Any) -> list[Any]:
    import torch

    encoded = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False).input_ids
        else:
            ids = tokenizer(prompt).input_ids
        encoded.append(torch.tensor([ids]))
    return encoded


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


def build_reference(model: Any, tokenizer: Any) -> Reference:
    import torch

    ref = Reference([], [], [])
    for ids in encode_prompts(tokenizer):
        with torch.no_grad():
            full = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        ref.ids.append(full)
        ref.prompt_lengths.append(ids.shape[1])
        ref.logits.append(_logits(model, full))
    if not all(bool(torch.isfinite(logits).all()) for logits in ref.logits):
        # Nothing can match a reference that is not a number; say so before writing anything.
        raise VerificationError(
            "The model to export produces NaN or infinite logits: its weights are not finite, "
            "so nothing was exported.",
            hint="The run diverged before its final save. Train again with a lower "
            "training.learning_rate (or lora.lora_alpha) and training.max_grad_norm at 1.0.",
        )
    return ref


def compare(
    model: Any, ref: Reference, what: str, key: str, strict_greedy: bool = True
) -> LogitCheck:
    import torch

    diffs, agree, total, margins, finite = [], 0, 0, [], True
    for ids, start, expected in zip(ref.ids, ref.prompt_lengths, ref.logits, strict=True):
        got = _logits(model, ids)
        # Checked apart: Python's max() over the prompts' differences can drop a NaN.
        finite = finite and bool(torch.isfinite(got).all())
        diffs.append((got - expected).abs().max().item())
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += got.shape[0]
        # Teacher-forced: position i predicts token i + 1 of the reference continuation.
        window = slice(start - 1, ids.shape[1] - 1)
        flipped = got[window].argmax(-1) != ids[0, start:]
        top2 = expected[window].topk(2, dim=-1).values
        margins += (top2[:, 0] - top2[:, 1])[flipped].tolist()
    tolerance = TOLERANCES[key]
    max_abs, share = max(diffs), agree / max(total, 1)
    # Logits that each move by at most d can swap the top two only where they were within 2d:
    # such near-ties (common in random test models) may flip; any other flip is a real error.
    explained = all(margin <= 2 * max_abs for margin in margins)
    greedy_ok = explained if strict_greedy else share >= Q8_0_MIN_AGREEMENT
    ok = finite and max_abs <= tolerance and greedy_ok
    return LogitCheck(
        what, max_abs, tolerance, share, not margins, ok, len(margins) * explained, finite
    )


def require(check: LogitCheck) -> str:
    if not check.passed:
        raise VerificationError(
            check.describe(),
            hint="Nothing was left under the target name. Report this with the model name.",
        )
    return check.describe()


def verify_gguf_transformers(path: Path, ref: Reference, qtype: str) -> LogitCheck:
    """Read the GGUF back through transformers (``gguf_file=``) and compare with the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    return compare(
        model, ref, f"GGUF {qtype} read back by transformers", f"gguf-{qtype}", qtype != "q8_0"
    )


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


VERIFY_TIMEOUT = (120.0, 120.0)  # seconds: base, and per GiB of GGUF (load + 8 tokens on 2 cores)


def verify_llama_cpp(
    path: Path, ref: Reference, tokenizer: Any, progress: Any = None, *, name: str = ""
) -> str:
    """Load the GGUF in llama.cpp in a child process, check it tokenizes the prompt the same way,
    and generate. A crash or hang ends the child only, and fails the check with what happened.

    Some llama-cpp-python builds crash (SIGSEGV) on any prompt evaluated in one batch of more
    than one token, whatever the file. After such a crash the file is tried once more with
    ``n_batch=1``; if that passes, the file is sound and the check says the build is at fault.
    """
    from engine.export import native

    ids = [int(t) for t in ref.ids[0][0, : ref.prompt_lengths[0]]]
    expected = [int(t) for t in ref.ids[0][0, ref.prompt_lengths[0] :]]
    request = {
        "path": str(path),
        "text": tokenizer.decode(ids),
        "ids": ids,
        "new_tokens": NEW_TOKENS,
        "n_batch": None,
    }
    timeout = native.file_timeout(path, *VERIFY_TIMEOUT)
    name = name or path.name  # the target's name: ``path`` may be a hidden staging file
    label = f"verifying {name} in llama.cpp (child process)"
    outcome = _llama_child(request, timeout, progress, label)
    note = ""
    if outcome.crashed:
        first = native.exit_text(outcome.returncode)
        request["n_batch"] = 1
        outcome = _llama_child(request, timeout, progress, label + ", n_batch=1")
        if outcome.ok:
            note = (
                f"; llama.cpp crashed with {first.split(' (')[0]} on the prompt in one batch and "
                "passed with n_batch=1, so this llama-cpp-python build is faulty (reinstall it)"
            )
    if not outcome.ok:
        raise _llama_failure(name, outcome, timeout)
    result = _answer(outcome.stdout)
    if result is None:
        raise VerificationError(
            f"llama.cpp's check of {name} ended without an answer.",
            hint=f"Its last output: {outcome.stderr_tail() or outcome.stdout[-300:] or '(none)'}",
        )
    if "load_error" in result:
        raise VerificationError(f"llama.cpp cannot load {name}: {result['load_error']}")
    if result["tokens"] != ids:
        raise VerificationError(
            f"llama.cpp tokenizes the prompt differently from the HF tokenizer "
            f"({len(result['tokens'])} vs {len(ids)} tokens).",
            hint="The GGUF tokenizer metadata does not match the model's tokenizer.",
        )
    generated = result["generated"]
    if not generated:
        raise VerificationError(f"llama.cpp loaded {name} but generated nothing.")
    same = sum(a == b for a, b in zip(generated, expected, strict=False))
    return (
        f"llama.cpp: loads, same prompt tokens, generated {len(generated)} tokens "
        f"({same}/{min(len(generated), len(expected))} equal to the HF greedy continuation)" + note
    )


def _answer(stdout: str) -> dict | None:
    """The child's JSON answer: its last line (native code may print before it)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _llama_child(request: dict, timeout: float, progress: Any, label: str) -> Any:
    from engine.export import native

    if progress is not None:
        progress(label, None)
    return native.run_child(
        native.llama_generate_command(),
        stdin=json.dumps(request),
        timeout=timeout,
        progress=progress or native.no_progress,
        label=label,
    )


def _llama_failure(name: str, outcome: Any, timeout: float) -> Exception:
    """The ExportFailed for a llama.cpp child that crashed, hung or failed."""
    from engine.export import native
    from engine.export.files import ExportFailed

    if outcome.timed_out:
        what = f"llama.cpp did not finish verifying {name} within {timeout:.0f} s; it was stopped"
    else:
        what = f"llama.cpp ended with {native.exit_text(outcome.returncode)} verifying {name}"
        if outcome.crashed:
            what = what.replace("ended with", "crashed with", 1)
    tail = outcome.stderr_tail()
    return ExportFailed(
        f"{what} (in a child process: finetty and any training run are unaffected). "
        f"The file was written but could not be verified, so it was not kept: nothing was left "
        f"under {name} and the unfinished "
        ".partial-* files were removed." + (f"\nllama.cpp said: {tail}" if tail else ""),
        hint='Check llama.cpp itself by hand on any GGUF, e.g. python -c "from llama_cpp import '
        "Llama; print(Llama(model_path='MODEL.gguf', n_batch=1)('Hello', max_tokens=8))\". If "
        "that fails too, the llama-cpp-python build is at fault: reinstall it (pip install "
        "--force-reinstall --no-cache-dir llama-cpp-python), or export --format merged and "
        "convert it with llama.cpp's convert_hf_to_gguf.py.",
    )
