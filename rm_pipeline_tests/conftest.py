"""Shared fixtures: a small slice of the bundled real annotations, and isolated storage roots."""

import itertools
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "rm_pipeline" / "data" / "annotations"
SLICE_LINES = {"pandalm_testset_v1.jsonl": 450, "tulu1_human_eval.jsonl": 300, "hh_rlhf_harmless_test.jsonl": 200}


@pytest.fixture(autouse=True)
def environment_restored():
    """Each test's environment is its own: a command run in-process (`main([...])`) sets $RM_PIPELINE_HOME and
    $DAGSTER_HOME for itself, and the commands a later test starts must not inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _first_lines(folder: Path, share: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in SLICE_LINES.items():
        with open(BUNDLED / name, encoding="utf-8") as source:
            (folder / name).write_text("".join(itertools.islice(source, int(count * share))), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def annotations_slice(tmp_path_factory) -> Path:
    """The first lines of each bundled batch: real data, small enough for many runs."""
    return _first_lines(tmp_path_factory.mktemp("annotations"))


@pytest.fixture(scope="session")
def small_annotations(tmp_path_factory) -> Path:
    """The slice's first third (all three batches): for tests of the graph's plumbing, where volume only costs."""
    return _first_lines(tmp_path_factory.mktemp("small_annotations"), share=1 / 3)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A two-layer BERT with a one-unit head, random weights and MiniLM's tokenizer: trains in seconds. It has the
    training_settings.json training publishes, so `score` and `evaluate` take it as a trained model."""
    import json
    from dataclasses import asdict

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rm_pipeline.lib.model_files import TRAINING_SETTINGS_FILE
    from rm_pipeline.lib.tokenization import default_base_model
    from rm_pipeline.lib.training.settings import TrainingSettings

    folder = tmp_path_factory.mktemp("tiny_encoder")
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / TRAINING_SETTINGS_FILE).write_text(json.dumps(asdict(TrainingSettings(base_model=default_base_model()))))
    return str(folder)


DECODER_WORDS = [
    "<unk>",
    "<eos>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "hello",
    "hi",
    "red",
    "blue",
    "name",
    "a",
    "colour",
    "there",
    "be",
    "kind.",
    "excellent",
    "terrible",
    "answer",
    "question",
    "the",
    "is",
    "sky",
    "what",
]
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] | lower }} {% endfor %}{{ eos_token }}"


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory) -> Path:
    """A 2-layer Llama with a word-level tokenizer (no pad token) and a chat template, saved locally."""
    import torch
    from transformers import LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_decoder")
    _decoder_tokenizer().save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForSequenceClassification(_tiny_llama_config(num_labels=1)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """The same 2-layer Llama and tokenizer as `tiny_decoder`, with a language-model head: a DPO base model."""
    import torch
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_causal_lm")
    _decoder_tokenizer().save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny_llama_config()).save_pretrained(folder)
    return folder


def _decoder_tokenizer():
    """A word-level tokenizer over DECODER_WORDS (no pad token) with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(DECODER_WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(DECODER_WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
        **extra,
    )


@pytest.fixture
def storage_root(tmp_path) -> Path:
    return tmp_path / "home"


# Thresholds any model meets, given some fresh-policy labels: for tests of the graph, not of the verdict.
PERMISSIVE_READINESS = {
    "evaluation_report": {
        "config": {
            "min_length_matched_accuracy": 0.0,
            "min_fresh_policy_accuracy": 0.0,
            "max_ece": 1.0,
            "min_pairs": 1,
            "max_probe_flip_rate": 1.0,
        }
    }
}


@pytest.fixture(scope="session")
def labelled_eval_dir(tmp_path_factory) -> Path:
    """An evaluation folder holding only five human-labelled pairs of fresh policy outputs: quick to score."""
    import json

    folder = tmp_path_factory.mktemp("eval")
    (folder / "fresh-policy").mkdir()
    pairs = [{"prompt": f"Name a fruit ({i})", "chosen": "An apple.", "rejected": "I won't."} for i in range(5)]
    (folder / "fresh-policy" / "labelled.jsonl").write_text("\n".join(map(json.dumps, pairs)) + "\n")
    return folder


@pytest.fixture
def small_dagster_dev(annotations_slice, tmp_path, tiny_encoder, labelled_eval_dir):
    """The real `dagster dev` on 127.0.0.1 with small settings, watching its own copy of the annotation slice."""
    import shutil

    from rm_pipeline_tests.support.dagster_dev import dagster_dev

    annotations = tmp_path / "annotations"
    shutil.copytree(annotations_slice, annotations)
    settings = {
        "RM_PIPELINE_BASE_MODEL": tiny_encoder,
        "RM_PIPELINE_EVAL": str(labelled_eval_dir),
        "RM_PIPELINE_SENSOR_INTERVAL": "2",  # a new batch is seen within seconds
    }
    with dagster_dev(tmp_path, annotations, settings) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's `postgresql` package) on 127.0.0.1, for the whole session."""
    from rm_pipeline_tests.support.postgres_server import running_postgres

    with running_postgres() as server:
        yield server
