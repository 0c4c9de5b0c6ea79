"""bf16 autocast for training and scoring: what stays fp32 (the score head, attention when asked), and padding."""

import numpy as np
import pytest
import torch

from rm_pipeline.lib.precision import FP32_SDPA, attention_in_fp32, autocast, uses_bf16
from rm_pipeline.lib.scoring import pad_right
from rm_pipeline.lib.tokenization import encode
from rm_pipeline.lib.training.model import load_model
from rm_pipeline.lib.training.settings import TrainingSettings


@pytest.fixture
def model_and_tokenizer(tiny_encoder):
    model, tokenizer = load_model(TrainingSettings(base_model=tiny_encoder))
    return model.eval(), tokenizer


def rewards(model, sequences, pad_token_id, bf16: bool, training: bool = True) -> np.ndarray:
    """Rewards with gradients (as in training: attention_in_fp32 applies) or without (as in evaluation)."""
    input_ids, attention_mask = pad_right(sequences, pad_token_id)
    with torch.set_grad_enabled(training), autocast("cpu", bf16):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == torch.float32  # the head computes in fp32 under autocast too
    return logits[:, 0].detach().numpy()


def test_fp32_attention_under_autocast_masks_padding_and_matches_sdpa(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sequences = encode(tokenizer, ["Name a colour."] * 2, ["Blue.", "Blue, like the sky " * 12], [False, False])
    pad = tokenizer.pad_token_id
    with_sdpa = rewards(model, sequences, pad, bf16=True, training=False)
    attention_in_fp32(model)
    assert model.config._attn_implementation == FP32_SDPA
    batched = rewards(model, sequences, pad, bf16=True)  # the short one padded to the long one
    alone = rewards(model, sequences[:1], pad, bf16=True)
    spread = float(np.abs(with_sdpa).max())
    # padding is masked: the short answer scores as it does alone (bf16 noise only)
    assert batched[0] == pytest.approx(alone[0], abs=0.02 * spread + 1e-4)
    np.testing.assert_allclose(batched, with_sdpa, atol=0.02 * spread + 1e-4)
    # without gradients attention is SDPA's bf16 kernel, as in scoring: the rewards the model gave before
    np.testing.assert_array_equal(rewards(model, sequences, pad, bf16=True, training=False), with_sdpa)
    # and without autocast the model is plain fp32: padding changes nothing beyond float noise
    assert rewards(model, sequences, pad, bf16=False)[0] == pytest.approx(
        rewards(model, sequences[:1], pad, bf16=False)[0], abs=1e-5
    )


def test_explicit_precision_wins_over_the_hardware():
    assert uses_bf16("fp32", "cpu") is False and uses_bf16("bf16", "cpu") is True
