"""The built-in skills as preference pairs, so a DPO/ORPO/KTO/SimPO demo runs offline.

The same prompts, answers and splits as the GRPO prompt set (builtin_prompts.py, itself
builtin_data's rows): chosen is the right answer, rejected a plausible wrong one made by a
fixed rule per skill (the sentence left as it was, the wrong word, another identity), so the
set is the same on every machine and the held-out split never shares a prompt with training.
The rows are in TRL's conversational form, with the ``task`` column kept for reports.
"""

from __future__ import annotations

from typing import Any

from engine.data import builtin_prompts
from engine.data.sources import Records

WRONG_IDENTITY = "I am a large language model trained by an AI lab."


def records(split: str = "train") -> Records:
    """Pairs of ``split`` (train or heldout, with optional slicing such as train[:64])."""
    prompts = builtin_prompts.records(split)
    return Records([_pair(row) for row in prompts], list(prompts.row_numbers))


def wrong_answer(task: str, prompt: str, answer: str) -> str:
    """A plausible wrong reply to a built-in prompt, never equal to ``answer``."""
    if task == "identity":
        return WRONG_IDENTITY
    # Every skill's prompt ends ": <sentence>" (builtin_data._TASK_PROMPTS).
    sentence = prompt.rsplit(": ", 1)[1]
    if task in ("remove_spaces", "uppercase"):
        wrong = sentence  # the rewrite not done
    elif task == "last_word":
        # The nearest other word: the right skill, the wrong position.
        wrong = next((word for word in reversed(sentence.split()) if word != answer), sentence)
    else:
        raise ValueError(f"no wrong answer is defined for built-in task {task!r}")
    return wrong if wrong != answer else f"{answer} {answer}"


def _pair(row: dict[str, Any]) -> dict[str, Any]:
    prompt = row["prompt"][0]["content"]
    return {
        "prompt": row["prompt"],
        "chosen": [{"role": "assistant", "content": row["answer"]}],
        "rejected": [
            {"role": "assistant", "content": wrong_answer(row["task"], prompt, row["answer"])}
        ],
        "task": row["task"],
    }
