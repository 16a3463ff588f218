"""A random-weight Llama with a real tokenizer, for GPU runs of the whole engine with no hub.

    python bench/random_model.py --tokenizer DIR --out DIR [--hidden 1024 --layers 8 --intermediate 4096]

DIR (tokenizer) holds tokenizer.json and tokenizer_config.json, e.g. SmolLM2's from the
embedded model's cache (~/.cache/finetty/embedded/smollm2-135m-instruct). The defaults give a
235M-parameter model: big enough for real GPU kernels, small enough that a step is launch-bound
(where any time the UI takes from the training thread shows).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def build(tokenizer: Path, out: Path, hidden: int, layers: int, intermediate: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    template = tokenizer / "chat_template.jinja"
    if template.is_file():
        shutil.copy(template, out / "chat_template.jinja")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=4096)
    args = parser.parse_args()
    print(build(args.tokenizer, args.out, args.hidden, args.layers, args.intermediate))


if __name__ == "__main__":
    main()
