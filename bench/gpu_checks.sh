#!/usr/bin/env bash
# The checks only a GPU can show, in one script for a short lease (see BENCHMARKS.md, "GPU").
#   bash bench/gpu_checks.sh quick     # MFU of a 0.5B-shaped decoder, the main job with a tiny decoder, the training tests
#   bash bench/gpu_checks.sh bundled   # the main job with the bundled MiniLM
# Missing packages may be carried as wheels in .whl/ (installed once into /tmp/site); results go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-checks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GX_ANALYTICS_ENABLED=false
if [ -d .whl ] && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.done
fi
export PYTHONPATH=$PWD:$PWD/.gpu_model:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, trl, dagster; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'dagster', dagster.__version__, torch.cuda.get_device_name(0))" || exit 1

copy_results() {  # $1: storage root, $2: name prefix
  cp "$1"/models/current/training_metrics.json "$OUT/$2-training_metrics.json" 2>/dev/null
  cp "$1"/reports/*/evaluation_report.json "$OUT/$2-evaluation_report.json" 2>/dev/null
}

case "${1:-quick}" in
quick)
  timeout 150 python3 bench/train_gpu_mfu.py --pairs 1024 2>&1 | grep -v "it/s\]" | tee "$OUT/mfu.txt"
  python3 - <<'PY'
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
  timeout 150 python3 -m rm_pipeline.cli run --home /tmp/home-tiny --base-model /tmp/tiny_decoder \
    > "$OUT/run-tiny-decoder.txt" 2>&1
  echo "tiny decoder run: exit $? after $((SECONDS - start)) s"; tail -25 "$OUT/run-tiny-decoder.txt"
  copy_results /tmp/home-tiny tiny
  timeout 120 python3 -m pytest -q -x -p no:cacheprovider rm_pipeline_tests/test_reward_training.py \
    rm_pipeline_tests/test_trl_compatibility.py rm_pipeline_tests/test_reward_model_stage.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
  ;;
bundled)
  rm -rf /tmp/home-bundled
  start=$SECONDS
  timeout 250 python3 -m rm_pipeline.cli run --home /tmp/home-bundled > "$OUT/run-bundled.txt" 2>&1
  echo "bundled run: exit $? after $((SECONDS - start)) s"; tail -25 "$OUT/run-bundled.txt"
  copy_results /tmp/home-bundled bundled
  ;;
esac
