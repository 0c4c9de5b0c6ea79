"""The installed versions meet pyproject's floors, and behave the way the code relies on."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions, version

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rm_pipeline_tests.conftest import REPO_ROOT

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = [Requirement(text) for text in PROJECT["dependencies"]]


@pytest.mark.parametrize("requirement", DEPENDENCIES, ids=[r.name for r in DEPENDENCIES])
def test_installed_version_meets_the_declared_range(requirement):
    assert requirement.specifier.contains(version(requirement.name), prereleases=True), (
        f"{requirement.name} {version(requirement.name)} is outside {requirement.specifier}"
    )


def test_every_package_the_code_imports_is_declared():
    """An import that works only because another package happens to pull it in breaks on the day that one
    stops: the package itself imports only what pyproject declares (the deploy extra's launchers included)."""
    declared = {
        canonicalize_name(Requirement(text).name)
        for text in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["deploy"]
    }
    distributions = packages_distributions()
    undeclared = {}
    for path in (REPO_ROOT / "rm_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "rm_pipeline":
                    continue
                owners = {canonicalize_name(owner) for owner in distributions.get(top, [top])}
                if not owners & declared:
                    undeclared.setdefault(top, path.relative_to(REPO_ROOT).as_posix())
    assert not undeclared, f"imported but not declared in pyproject (module: first file): {undeclared}"


def test_a_float_warmup_below_one_is_a_share_of_the_steps():
    """reward_config passes `warmup_ratio` as `warmup_steps`: a ratio from transformers 5.0 on (about one
    step under 4.x)."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", warmup_steps=0.1, use_cpu=True, report_to=[])
    assert args.get_warmup_steps(200) == 20


def test_torch_tells_whether_the_cpu_multiplies_bf16_natively():
    """`hardware.cpu_multiplies_bf16` is the one caller of torch.cpu's private probes of AMX and AVX-512 BF16;
    they must exist and agree with the CPU's own flags where Linux lists them."""
    from pathlib import Path

    from rm_pipeline.lib.hardware import cpu_multiplies_bf16

    answer = cpu_multiplies_bf16()  # raises AttributeError if a torch upgrade removed a probe
    assert isinstance(answer, bool)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
        assert answer == bool({"amx_tile", "avx512_bf16"} & flags)


def test_trl_logs_the_statistics_our_trainer_keeps_on_the_device(tiny_encoder, tmp_path):
    """Our trainer computes the loss itself (TRL's `compute_loss` reads its metrics with several `.item()` a step)
    and hands its statistics to TRL's `log`, which must pass them through: accuracy is in the log line."""
    from datasets import Dataset

    from rm_pipeline.lib.training.trainer import pair_credit_trainer_class, preference_collator

    tokenizer, model, chosen, rejected = _tiny_model_and_pair(tiny_encoder)
    dataset = Dataset.from_dict({"chosen_ids": [chosen] * 4, "rejected_ids": [rejected] * 4, "preference": [1.0] * 4})
    args = _one_step(tmp_path)
    trainer = pair_credit_trainer_class()(
        model=model,
        args=args,
        data_collator=preference_collator(tokenizer, args),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 1
    assert trainer.state.log_history[0]["accuracy"] in (0.0, 0.5, 1.0)
    assert {"margin", "mean_reward", "min_reward", "max_reward", "num_tokens"} <= set(trainer.state.log_history[0])


def test_trl_trains_on_pre_tokenized_pairs_as_given(tiny_encoder, tmp_path):
    """TRL (0.29 on) takes `chosen_ids`/`rejected_ids` as they are: no EOS appended, which a BERT tokenizer
    hasn't got, and no re-tokenization, so the length rule and training see the same tokens."""
    from datasets import Dataset
    from trl import RewardTrainer

    tokenizer, model, chosen, rejected = _tiny_model_and_pair(tiny_encoder)
    dataset = Dataset.from_dict({"chosen_ids": [chosen] * 4, "rejected_ids": [rejected] * 4, "margin": [0.5] * 4})
    trainer = RewardTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=dataset,
        args=_one_step(tmp_path),
    )
    assert trainer.train_dataset[0]["chosen_ids"] == chosen
    assert trainer.train_dataset[0]["rejected_ids"] == rejected
    assert trainer.train().global_step == 1


def _tiny_model_and_pair(tiny_encoder):
    """The tiny encoder with its tokenizer, and the token ids of one chosen and one rejected answer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=1)
    return tokenizer, model, tokenizer(["a good answer"])["input_ids"][0], tokenizer(["bad"])["input_ids"][0]


def _one_step(output_dir):
    """One training step of two pairs on the CPU, no reporting."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        max_length=None,
        per_device_train_batch_size=2,
        max_steps=1,
    )
