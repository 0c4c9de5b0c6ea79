"""The model to train: a base checkpoint with a one-unit score head, frozen layers or LoRA, and the model to publish."""

from __future__ import annotations

from rm_pipeline.lib.hardware import hardware
from rm_pipeline.lib.precision import (
    attention_in_fp32,
    head_in_fp32,
    head_module_name,
    uses_bf16,
)
from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.tokenization import load_tokenizer, quiet_loading
from rm_pipeline.lib.training.length_head import add_length_head
from rm_pipeline.lib.training.packing import resolve_batching
from rm_pipeline.lib.training.settings import TrainingSettings


def load_model(settings: TrainingSettings, dtype=None):
    """A one-unit score head on the base checkpoint, computing in fp32 even under autocast; pad token known to the
    model config. fp32 unless told otherwise: transformers 5 would keep a bf16/fp16 checkpoint's dtype, and AdamW
    needs fp32 master weights. The checkpoint is local (or cached) and in safetensors."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    with quiet_loading():  # the new score head, MISSING from the base checkpoint by design, is no error
        model = AutoModelForSequenceClassification.from_pretrained(
            settings.base_model,
            num_labels=1,
            trust_remote_code=settings.trust_remote_code,
            dtype=dtype or torch.float32,
            local_files_only=True,  # checked by load_tokenizer: nothing is downloaded
            use_safetensors=True,  # never a pickle: a run config can name any folder
        )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a pad token was added
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    head_in_fp32(model)
    return model, tokenizer


def transformer_layers(model):
    """The stack of transformer blocks, found by shape rather than by architecture name."""
    import torch.nn as nn

    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"can't find the {count} transformer layers of {type(model).__name__}")


def freeze_all_but_last(model, n_layers: int) -> None:
    """Embeddings and all but the last `n_layers` blocks frozen; later norms, pooler and head train."""
    layers = transformer_layers(model)
    frozen = {id(p) for layer in list(layers)[: max(len(layers) - n_layers, 0)] for p in layer.parameters()}
    frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
    for name, module in model.named_modules():
        if name.endswith("embeddings") or name.endswith("embed_tokens") or name.endswith("wpe"):
            frozen |= {id(p) for p in module.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) not in frozen


def lora_config(model, settings: TrainingSettings):
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        modules_to_save=[head_module_name(model)],
    )


def prepare_model(settings: TrainingSettings):
    """The base model with a new score head, frozen as asked, and the LoRA config (or None)."""
    from transformers import set_seed

    set_seed(settings.seed)  # a new score head is initialised at load: the same seed, the same model
    model, tokenizer = load_model(settings)  # fp32 master weights; bf16 on GPU is autocast by the Trainer
    if settings.length_head:  # before LoRA copies the head into modules_to_save
        add_length_head(model)
    if settings.train_last_n_layers is not None and not settings.lora_rank:
        freeze_all_but_last(model, settings.train_last_n_layers)
    device = hardware()["device"]
    set_attention(model, resolve_batching(settings, model, device).attention)
    if device == "cpu" and uses_bf16(settings.precision, "cpu"):
        attention_in_fp32(model)
    return model, tokenizer, lora_config(model, settings) if settings.lora_rank else None


def set_attention(model, implementation: str | None) -> None:
    if implementation is None or implementation == model.config._attn_implementation:
        return
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError) as error:  # flash-attn missing, or a model without that kernel
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SettingError(f"attention {implementation!r} can't be used with this model: {reason}"[:300]) from None


def final_model(trainer, merge_lora: bool):
    """The model to publish: the best checkpoint when evaluating (load_best_model_at_end), LoRA merged."""
    # without accelerate's autocast wrapper: statistics are those of the weights as saved (bf16 on a GPU otherwise)
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if merge_lora:
        model = model.merge_and_unload()  # a plain checkpoint: loads without peft
    model.eval()
    return model
