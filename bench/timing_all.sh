#!/usr/bin/env bash
# The timing numbers of BENCHMARKS.md, in one go on a quiet machine (about 45 minutes):
#   bash bench/timing_all.sh
set -euo pipefail
mkdir -p bench/out
python bench/bench_throughput.py --repeats 5 > bench/out/throughput.txt
python bench/strategy_speed.py --bench pmnist --repeats 3 > bench/out/speed_pmnist.txt
python bench/strategy_speed.py --bench pmnist --repeats 3 \
  --methods finetune,oewc,oewc-fisher5000,ewc,si,mas > bench/out/speed_pmnist_penalties.txt
python bench/strategy_speed.py --bench smnist --repeats 3 --methods all > bench/out/speed_smnist.txt
python bench/ewc_fisher_samples.py --seeds 0,1,2 --samples all,5000 > bench/out/fisher_samples.txt
: > bench/out/cli_times.txt
for i in 1 2 3; do
  rm -rf bench/out/cli_derpp bench/out/cli_demo
  /usr/bin/time -f "pmnist_derpp500 whole run (retain run, data loading included): %e s" \
    retain run bench/configs/pmnist_derpp500.yaml --out bench/out/cli_derpp -q >/dev/null 2>>bench/out/cli_times.txt
  /usr/bin/time -f "retain demo: %e s" retain demo --out bench/out/cli_demo -q >/dev/null 2>>bench/out/cli_times.txt
done
