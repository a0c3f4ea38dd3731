#!/bin/bash
# Issue #17's table, side by side: rounds of alternating whole-process runs (wall clock, peak
# RSS from /usr/bin/time) of `mixer tokenize` with its defaults from another checkout (BEFORE,
# e.g. a `git worktree add --detach` of an older commit), from this checkout, with --backend
# giga, and of Megatron's fast path (benchmarks/peers/tok_megatron_fast.py in
# benchmarks/.venvs/megatron). Ids are checked by bench_tokenize_peers.py (--tools
# mixer,megatron); this script only times. Corpus and tokenizer: bench_tokenize_peers.py
# --mb 200 --vocab 32000 builds them (cached under benchmarks/data).
#   BEFORE=/path/to/old/checkout benchmarks/ab_megatron_fast.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
D=${DATA:-benchmarks/data/corpus-mixed-mb200-files4-seed0-py311}; D=$(realpath $D)
T=${TOKENIZER:-benchmarks/data/tokenizer-bytebpe-32000-train100mb-seed0-py311.json}; T=$(realpath $T)
O=$(mktemp -d); mkdir -p $O
FILES=$(ls $D/*.jsonl.zst | python3 -c 'import sys,json; print(json.dumps([l.strip() for l in sys.stdin]))')
for r in $(seq ${ROUNDS:-3}); do
  for which in before after giga megatron; do
    rm -rf $O/out; mkdir -p $O/m
    uptime | sed 's/.*load/load/' | tr '\n' ' '
    case $which in
      before) (cd $BEFORE && PYTHONPATH=$BEFORE /usr/bin/time -f "$which wall %e s maxrss %M KB" $PY -m mixer.cli tokenize $D -t $T -o $O/out --no-progress) 2>&1 | grep -v "^mixer tokenize: wrote";;
      after) (cd $ROOT && PYTHONPATH=$ROOT /usr/bin/time -f "$which wall %e s maxrss %M KB" $PY -m mixer.cli tokenize $D -t $T -o $O/out --no-progress) 2>&1 | grep -v "^mixer tokenize: wrote";;
      giga) (cd $ROOT && PYTHONPATH=$ROOT /usr/bin/time -f "$which wall %e s maxrss %M KB" $PY -m mixer.cli tokenize $D -t $T -o $O/out --no-progress --backend giga) 2>&1 | grep -v "^mixer tokenize: wrote";;
      megatron) /usr/bin/time -f "$which wall %e s maxrss %M KB" $ROOT/benchmarks/.venvs/megatron/bin/python $ROOT/benchmarks/peers/tok_megatron_fast.py "{\"files\": $FILES, \"tokenizer\": \"$T\", \"eos_id\": ${EOS_ID:-0}, \"out\": \"$O/m/megatron\"}" 2>&1;;
    esac
  done
done
rm -rf "$O"
