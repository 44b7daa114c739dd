#!/usr/bin/env bash
# The one prepared GPU check (for a session that is lent a GPU): a CUDA smoke test of training
# (bf16 autocast, channels_last, torch.compile) and every benchmark table on the GPU.
#   bash benchmarks/gpu_check.sh OUT_DIR      (a few minutes on one H100)
set -euo pipefail
OUT=${1:-gpu-check}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name())"
python -m vaevq train tiny train.steps=60 train.precision=bf16 eval.rfid=false \
    --device cuda --out "$OUT/tiny-bf16" 2>&1 | tail -3
python -m vaevq train tiny train.steps=30 train.compile=true eval.rfid=false \
    --device cuda --out "$OUT/tiny-compiled" 2>&1 | tail -3
python benchmarks/bench_all.py --device cuda --threads 8 2>&1 | tee "$OUT/bench.txt"
# issue 13: a VAEVQ step (both paths in one decoder call) against a VQGAN step; goal <= 1.25x
python benchmarks/bench_vaevq_step.py --device cuda --preset small --steps 30 2>&1 | tee "$OUT/vaevq-step.txt"
# issue 14 (part 1): sampling with and without the key/value cache, gpt-tiny and GPT-B shapes
python benchmarks/bench_sampling.py --device cuda --threads 8 2>&1 | tee "$OUT/sampling.txt"
# issue 14: a GPT-B training step (bf16) against the matmuls of its FLOPs, and gpt-tiny end to end
python benchmarks/bench_gpt_train.py --device cuda --shape gpt-b --batch 32 --steps 10 2>&1 | tee "$OUT/gpt-train.txt"
python -m vaevq train gpt-tiny generator.tokenizer="$OUT/tiny-bf16" generator.cache_dir="$OUT/codes" \
    train.steps=200 train.precision=bf16 --device cuda --out "$OUT/gpt-tiny" 2>&1 | tail -2
python -m vaevq eval --checkpoint "$OUT/gpt-tiny" --num 500 --device cuda 2>&1 | tail -12 | tee "$OUT/gpt-eval.txt"
# issue 15: latent diffusion: sampling (50 and 250 DDIM steps) and training steps for ldm-tiny and the
# ldm-4 shape, then ldm-tiny trained, sampled and evaluated on CUDA on the bf16 tokenizer above
python benchmarks/bench_ldm.py --device cuda --threads 8 --batch 32 --train-batch 32 2>&1 | tee "$OUT/ldm-bench.txt"
python -m vaevq train ldm-tiny generator.tokenizer="$OUT/tiny-bf16" generator.cache_dir="$OUT/codes" \
    train.steps=500 train.precision=bf16 --device cuda --out "$OUT/ldm-tiny" 2>&1 | tail -2
python -m vaevq eval --checkpoint "$OUT/ldm-tiny" --num 500 --device cuda 2>&1 | tail -12 | tee "$OUT/ldm-eval.txt"
