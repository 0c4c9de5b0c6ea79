#!/usr/bin/env bash
# The checks only a GPU can show, in one script for a short lease (see BENCHMARKS.md, "GPU"); about 8 minutes,
# 11 at most (the timeouts below).
#   bash bench/gpu_checks.sh quick     # issue 21's levers (0.5B all variants, long prompts, 1.5B), flex_attention's
#                                      # equivalence, the main job with a tiny decoder, the training tests
#   bash bench/gpu_checks.sh bundled   # the main job with the bundled MiniLM
# Without a GPU the same steps run at tiny sizes on the CPU: a smoke test of the script, not a measurement.
# Missing packages may be carried as wheels in .whl/ (installed once into /tmp/site); results go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-checks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GX_ANALYTICS_ENABLED=false
if [ -d .whl ] && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done
fi
export PYTHONPATH=$PWD:$PWD/.gpu_model:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
PYTHON=${PYTHON:-python3}
if nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; then GPU=1; else GPU=0; fi
$PYTHON -c "import torch, transformers, trl, dagster; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'dagster', dagster.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || exit 1

copy_results() {  # $1: storage root, $2: name prefix
  cp "$1"/models/current/training_metrics.json "$OUT/$2-training_metrics.json" 2>/dev/null
  cp "$1"/reports/*/evaluation_report.json "$OUT/$2-evaluation_report.json" 2>/dev/null
}

bench() {  # $1: timeout in seconds, $2: output name, then train_gpu_mfu.py's arguments (tiny sizes without a GPU)
  local limit=$1 name=$2; shift 2
  if [ "$GPU" = 0 ]; then  # keep only the variants
    local variants=() seen=0 argument
    for argument in "$@"; do [ "$argument" = --variants ] && seen=1; [ $seen = 1 ] && variants+=("$argument"); done
    set -- --shape tiny --pairs 32 --length 64 --prompt-length 32 --batch-size 8 "${variants[@]}"
  fi
  echo "== train_gpu_mfu.py $*"
  timeout "$limit" $PYTHON bench/train_gpu_mfu.py "$@" 2>&1 | grep -v "it/s\]\|examples/s\]\|Warning\|warn\|options_class" | tee "$OUT/$name.txt"
}

case "${1:-quick}" in
quick)
  start=$SECONDS
  # flex_attention's packed rows give the padded rewards and gradients on this GPU (skipped on a CPU)
  timeout 90 $PYTHON -m pytest -q -x -p no:cacheprovider rm_pipeline_tests/test_packed_training.py -k "flex or by_hand or never_waits" \
    2>&1 | tail -5 | tee "$OUT/flex-tests.txt"
  # padded (before issue 21) vs padding-free vs shared prompt vs all (+ token budget): 0.5B shape, 32-token prompts
  bench 240 mfu-0.5b --shape 0.5b --pairs 384
  # multi-turn-like prompts: 512 shared tokens, 256-512-token responses
  bench 80 mfu-0.5b-long-prompt --shape 0.5b --pairs 128 --length 512 --prompt-length 512 --variants padded shared-prompt
  bench 100 mfu-1.5b --shape 1.5b --pairs 96 --batch-size 8 --variants padded all  # 16 padded pairs: 65.7 GB at 0.5B
  echo "benchmarks: $((SECONDS - start)) s"
  $PYTHON - <<'PY'
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
from rm_pipeline.lib.tokenization import default_base_model
tokenizer = AutoTokenizer.from_pretrained(default_base_model())
config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, num_labels=1,
                     pad_token_id=tokenizer.pad_token_id)
torch.manual_seed(0)
LlamaForSequenceClassification(config).save_pretrained("/tmp/tiny_decoder")
tokenizer.save_pretrained("/tmp/tiny_decoder")
PY
  rm -rf /tmp/home-tiny
  start=$SECONDS
  timeout 90 $PYTHON -m rm_pipeline.cli run --home /tmp/home-tiny --base-model /tmp/tiny_decoder \
    > "$OUT/run-tiny-decoder.txt" 2>&1
  echo "tiny decoder run: exit $? after $((SECONDS - start)) s"; tail -25 "$OUT/run-tiny-decoder.txt"
  copy_results /tmp/home-tiny tiny
  timeout 60 $PYTHON -m pytest -q -x -p no:cacheprovider -m "not trains" rm_pipeline_tests/test_reward_training.py \
    rm_pipeline_tests/test_trl_compatibility.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
  ;;
bundled)
  rm -rf /tmp/home-bundled
  start=$SECONDS
  timeout 250 $PYTHON -m rm_pipeline.cli run --home /tmp/home-bundled > "$OUT/run-bundled.txt" 2>&1
  echo "bundled run: exit $? after $((SECONDS - start)) s"; tail -25 "$OUT/run-bundled.txt"
  copy_results /tmp/home-bundled bundled
  ;;
esac
