"""Tokenization: one encoding for the length rule and for training, never truncated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rm_pipeline.lib.tokenization import (
    default_base_model,
    encode,
    is_encoder,
    load_tokenizer,
    prompt_messages,
    prompt_text,
    token_lengths,
)

CHAT = json.dumps(
    [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Name a colour"},
    ]
)


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(default_base_model())


def test_the_default_base_model_is_bundled_minilm():
    path = Path(default_base_model())
    assert path.is_dir()
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"]) == ("bert", 6)  # MiniLM-L6: a small BERT
    assert (path / "tokenizer.json").is_file()  # loads offline, from the package itself


def test_load_tokenizer_is_cached(minilm):
    assert load_tokenizer(default_base_model()) is minilm
    assert is_encoder(minilm)


def test_encoder_reads_prompt_and_response_as_a_text_pair(minilm):
    [ids] = encode(minilm, ["What colour is the sky?"], ["Blue."], [False])
    tokens = minilm.convert_ids_to_tokens(ids)
    assert tokens.count("[CLS]") == 1 and tokens[0] == "[CLS]"
    assert tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    first_sep = tokens.index("[SEP]")
    assert minilm.convert_tokens_to_string(tokens[1:first_sep]) == "what colour is the sky?"
    assert minilm.convert_tokens_to_string(tokens[first_sep + 1 : -1]) == "blue."


def test_conversational_prompts_are_flattened_for_an_encoder(minilm):
    flat = prompt_text(CHAT, conversational=True)
    assert flat.split("\n") == ["system: Be kind.", "user: Hello there", "assistant: Hi!", "user: Name a colour"]
    assert prompt_text("plain text", conversational=False) == "plain text"
    [chat_ids] = encode(minilm, [CHAT], ["Red."], [True])
    [flat_ids] = encode(minilm, [flat], ["Red."], [False])
    assert chat_ids == flat_ids
    tokens = minilm.convert_ids_to_tokens(chat_ids)
    assert tokens.count("[CLS]") == 1 and tokens.count("[SEP]") == 2
    assert "{" not in tokens and "role" not in tokens  # no JSON syntax reaches the model


def test_long_inputs_are_never_truncated(minilm):
    response = " ".join(["token"] * 1500)
    [ids] = encode(minilm, ["prompt"], [response], [False])
    assert len(ids) > minilm.model_max_length
    assert minilm.convert_ids_to_tokens(ids).count("token") == 1500


def test_token_lengths_count_the_encoded_ids(minilm):
    prompts, responses = ["a", "a longer prompt here", CHAT], ["b", "c d e", "Red."]
    conversational = np.array([False, False, True])
    lengths = token_lengths(minilm, prompts, responses, conversational)
    assert lengths.dtype == np.int64
    assert lengths.tolist() == [len(ids) for ids in encode(minilm, prompts, responses, conversational)]
    assert lengths[0] == 5  # [CLS] a [SEP] b [SEP]


def test_prompt_messages_wrap_plain_text():
    assert prompt_messages("Hi", conversational=False) == [{"role": "user", "content": "Hi"}]
    assert prompt_messages(CHAT, conversational=True)[1] == {"role": "user", "content": "Hello there"}


# ---------------------------------------------------------------- a decoder, built offline


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A word-level decoder tokenizer with a chat template, saved and reloaded: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "<unk>",
        "<eos>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "hello",
        "hi",
        "red",
        "name",
        "a",
        "colour",
        "there",
        "be",
        "kind.",
        "hi!",
        "red.",
    ]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("tiny_decoder")
    tokenizer.save_pretrained(folder)
    return folder


def test_decoder_gets_a_pad_token_and_an_eos_at_the_end(tiny_decoder):
    tokenizer = load_tokenizer(str(tiny_decoder))
    assert not is_encoder(tokenizer)
    # never EOS as padding: the reward is read at the last non-padding token, which must be the EOS
    assert tokenizer.pad_token == "<unk>" and tokenizer.eos_token == "<eos>"
    [ids] = encode(tokenizer, ["hello "], ["red"], [False])
    assert tokenizer.convert_ids_to_tokens(ids) == ["hello", "red", "<eos>"]


def test_decoder_reads_the_chat_template_and_ends_in_one_eos(tiny_decoder):
    tokenizer = load_tokenizer(str(tiny_decoder))
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] | lower }} {% endfor %}{{ eos_token }}"
    )
    try:
        [plain, chat] = encode(tokenizer, ["hello", CHAT], ["red.", "red."], [False, True])
    finally:
        tokenizer.chat_template = None  # the tokenizer is cached: leave it as loaded
    assert tokenizer.convert_ids_to_tokens(plain) == ["<|user|>", "hello", "<|assistant|>", "red.", "<eos>"]
    tokens = tokenizer.convert_ids_to_tokens(chat)
    assert tokens[0] == "<|system|>" and tokens[-2:] == ["red.", "<eos>"]
    assert tokens.count("<eos>") == 1  # the template's own EOS is not doubled
    assert tokens.count("<|assistant|>") == 2


def test_nothing_to_encode_is_an_empty_result(minilm, tiny_decoder):
    assert encode(minilm, [], [], []) == []
    assert token_lengths(minilm, [], [], []).tolist() == []
    assert encode(load_tokenizer(str(tiny_decoder)), [], [], np.array([], dtype=bool)) == []
