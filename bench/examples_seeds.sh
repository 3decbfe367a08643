#!/usr/bin/env bash
# BENCHMARKS.md section 1: Split MNIST and Permuted MNIST, finetune vs joint, seeds 0-2.
#   bash bench/examples_seeds.sh   (writes bench/out/<example>-s<seed>/result.json)
set -euo pipefail
for ex in split_mnist permuted_mnist; do
  for seed in 0 1 2; do
    out=bench/out/$ex-s$seed
    rm -rf "$out"
    retain compare examples/$ex.yaml --strategies finetune,joint --out "$out" -q seed=$seed output.checkpoints=false >/dev/null
  done
done
python bench/summarize.py bench/out/split_mnist-s* bench/out/permuted_mnist-s*
