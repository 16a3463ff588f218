"""Host (Python) time of one training step when the math is negligible: a 24-layer Qwen2 of
hidden size 64 on the CPU, one thread, LoRA r8 on every linear layer.

    python bench/host_overhead.py [--layers 24] [--steps 6] [--rounds 8]

Prints, per configuration, the median over rounds of each round's fastest forward+backward
time: PEFT's path, with transformers' checkpointing, finetty's fused LoRA, and fused LoRA with
finetty's per-layer checkpointing, the last two also with the projections that share an input
grouped (engine.speed.grouped_lora, not the default). On a GPU a small model's step is bound by this
time (plus kernel launches), not by its matmuls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build(layers: int, fused: bool, checkpointing: bool, grouped: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.speed.fast_path import apply_fast_path

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    if fused:
        apply_fast_path(
            model,
            device="cpu",
            uses_adapter=True,
            gradient_checkpointing=checkpointing,
            grouped_lora=grouped,
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


CONFIGS = [  # name, fused LoRA, checkpointing, grouped projections
    ("peft", False, False, False),
    ("peft_transformers_checkpointing", False, True, False),
    ("fused_lora", True, False, False),
    ("fused_lora_grouped", True, False, True),
    ("fused_lora_layer_checkpointing", True, True, False),
    ("fused_lora_layer_checkpointing_grouped", True, True, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--steps", type=int, default=6, help="steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    import torch

    from engine.speed.loss import chunked_loss_sum

    torch.set_num_threads(1)
    ids = torch.randint(0, 256, (2, 16))
    models = {name: build(args.layers, *flags) for name, *flags in CONFIGS}
    # Configurations take turns, and each round keeps its fastest step: on a shared virtual
    # machine, stolen CPU time only ever adds, and it comes in bursts longer than a step.
    fastest: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                chunked_loss_sum(model, {"input_ids": ids}, ids).backward()
                times.append(time.perf_counter() - start)
            fastest[name].append(min(times[1:]))
    row = {"bench": "host_overhead", "layers": args.layers, "rounds": args.rounds}
    for name, times in fastest.items():
        row[f"{name}_ms"] = round(1000 * statistics.median(times), 1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
