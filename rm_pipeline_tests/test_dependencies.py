"""The installed versions meet pyproject's floors, and behave the way the code relies on."""

import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from rm_pipeline_tests.conftest import REPO_ROOT

DEPENDENCIES = [
    Requirement(text) for text in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
]


@pytest.mark.parametrize("requirement", DEPENDENCIES, ids=[r.name for r in DEPENDENCIES])
def test_installed_version_meets_the_declared_range(requirement):
    assert requirement.specifier.contains(version(requirement.name), prereleases=True), (
        f"{requirement.name} {version(requirement.name)} is outside {requirement.specifier}"
    )


def test_a_float_warmup_below_one_is_a_share_of_the_steps():
    """reward_config passes `warmup_ratio` as `warmup_steps`: a ratio from transformers 5.0 on (about one
    step under 4.x)."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", warmup_steps=0.1, use_cpu=True, report_to=[])
    assert args.get_warmup_steps(200) == 20


def test_torch_tells_whether_the_cpu_multiplies_bf16_natively():
    """`native_bf16` reads torch.cpu's private probes of AMX and AVX-512 BF16; they must exist and agree with the
    CPU's own flags where Linux lists them."""
    from pathlib import Path

    import torch

    amx, avx512_bf16 = torch.cpu._is_amx_tile_supported(), torch.cpu._is_avx512_bf16_supported()
    assert isinstance(amx, bool) and isinstance(avx512_bf16, bool)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        assert amx == ("amx_tile" in flags) and avx512_bf16 == ("avx512_bf16" in flags)


def test_trl_trains_on_pre_tokenized_pairs_as_given(tiny_encoder, tmp_path):
    """TRL (0.29 on) takes `chosen_ids`/`rejected_ids` as they are: no EOS appended, which a BERT tokenizer
    hasn't got, and no re-tokenization, so the length rule and training see the same tokens."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=1)
    chosen, rejected = tokenizer(["a good answer"])["input_ids"][0], tokenizer(["bad"])["input_ids"][0]
    dataset = Dataset.from_dict({"chosen_ids": [chosen] * 4, "rejected_ids": [rejected] * 4, "margin": [0.5] * 4})
    trainer = RewardTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        args=RewardConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to=[],
            max_length=None,
            per_device_train_batch_size=2,
            max_steps=1,
        ),
    )
    assert trainer.train_dataset[0]["chosen_ids"] == chosen
    assert trainer.train_dataset[0]["rejected_ids"] == rejected
    assert trainer.train().global_step == 1
