#!/usr/bin/env bash
# AWL / focal ablation of the encoder: same seed, data, steps and evaluation; one switch
# changed per run. Every step mixes the heads (train/encoder.py), so T-AWL acts within a step.
# Writes runs/ablation-*/ (each run replaced) and then bench/results/encoder_ablation.{md,json}.
#   STEPS=200 bash bench/ablation.sh            # DEVICE=cuda on a GPU machine, THREADS=2 ...
set -eu
STEPS=${STEPS:-200}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-2}
for cfg in "all-on:" "no-tawl:--no-tawl" "no-dawl:--no-dawl" "no-focal:--focal-gamma 0"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  rm -rf "runs/ablation-$name"  # a finished earlier run would be refused without --resume
  # shellcheck disable=SC2086  # $flags is a list of options
  affedge train encoder --out "runs/ablation-$name" --steps "$STEPS" --batch-size 32 \
    --lr 8e-5 --max-length 80 --eval-limit 400 --device "$DEVICE" --threads "$THREADS" \
    $flags > "runs/ablation-$name.log" 2>&1
done
python -m affedge.bench.ablation_report runs/ablation-all-on runs/ablation-no-tawl \
  runs/ablation-no-dawl runs/ablation-no-focal
