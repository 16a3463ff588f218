#!/usr/bin/env bash
# One device call that measures what bench/RESULTS.md still lacks, in one session:
#   same-session anchors (Unsloth) and finetty rows, 1/2/4-GPU scaling (DDP LoRA, FSDP full),
#   and the UI overhead on a GPU.
#
#   bash bench/gpu_session.sh SESSION_ID [SITE_DIR] [ANCHOR_DIR]
#
# SITE_DIR: unzipped wheels from shared/device/build-site.sh --unsloth (default .site-a);
# ANCHOR_DIR: a folder with shared/bench/anchor_bench.py and SmolLM2's tokenizer files in
# tokenizer/ (default .anc2). Both are carried, not committed. Rows go to $OUT/*.jsonl.
set -u
S=$1 SITE=${2:-.site-a} ANC=${3:-.anc2}
export PYTHONPATH=$PWD/$SITE:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error FINETTY_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "")
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
N=$(nvidia-smi -L | wc -l); nvidia-smi -L
B="python3 bench/gpu_throughput.py --model-root /tmp/fm --session $S --out $OUT/finetty.jsonl --steps 12 --warmup 3 --batch 8 --seq 2048"
# Anchors on the last GPU while finetty's one-GPU rows run on GPU 0 (separate cards, same host).
if [ -f "$ANC/anchor_bench.py" ] && [ "$N" -ge 2 ]; then
  (CUDA_VISIBLE_DEVICES=$((N - 1)) timeout 540 python3 "$ANC/anchor_bench.py" \
     --suite llama8b:unsloth:qlora,llama8b:unsloth:lora,qwen05b:unsloth:lora --batch 8 --seq 2048 \
     --steps 15 --warmup 3 --out-dir /tmp/anchor_out > /tmp/anchors.log 2>&1
   cp /tmp/anchor_out/results.jsonl "$OUT/anchors.jsonl") &
fi
for m in qlora lora; do CUDA_VISIBLE_DEVICES=0 timeout 200 $B --shape llama8b --mode $m 2>/dev/null | cut -c1-240; done
for m in lora full; do CUDA_VISIBLE_DEVICES=0 timeout 90 $B --shape qwen05b --mode $m 2>/dev/null | cut -c1-240; done
wait
# Scaling: DDP LoRA at 8B, FSDP full fine-tuning at 0.5B, on 2 and (where present) 4 GPUs.
for g in 2 4; do
  [ "$N" -ge "$g" ] || continue
  timeout 240 python3 -m torch.distributed.run --standalone --nproc-per-node $g bench/gpu_throughput.py \
    --model-root /tmp/fm --session $S --out $OUT/finetty.jsonl --steps 12 --warmup 3 --batch 8 --seq 2048 \
    --shape llama8b --mode lora 2>/dev/null | cut -c1-240
  timeout 120 python3 -m torch.distributed.run --standalone --nproc-per-node $g bench/gpu_throughput.py \
    --model-root /tmp/fm --session $S --out $OUT/finetty.jsonl --steps 12 --warmup 3 --batch 8 --seq 2048 \
    --shape qwen05b --mode full 2>/dev/null | cut -c1-240
done
tail -3 /tmp/anchors.log 2>/dev/null | cut -c1-240
