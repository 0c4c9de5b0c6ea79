"""Data-parallel training: the same `train_reward_model` run as 2 processes (accelerate launch, gloo on CPU) as
the training launcher starts it with `processes: 2`, against one process accumulating 2 batches a step.

This module is also the driver each process runs (`python -m rm_pipeline_tests.test_multiprocess_training
<job.json>`): it trains with a recording callback that writes, per rank, the pair ids of each step's batches and a
hash of the weights after each step, and can kill its process right after a checkpoint (a crash to resume from).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rm_pipeline.lib.training.launch import launch_command
from rm_pipeline_tests.conftest import REPO_ROOT
from rm_pipeline_tests.test_reward_training import learnable_pairs, state_dict_of

pytestmark = pytest.mark.trains

DRIVER = "rm_pipeline_tests.test_multiprocess_training"
TRAIN_PAIRS, BATCH, CHECKPOINT_EVERY = 32, 4, 2
STEPS = TRAIN_PAIRS // (2 * BATCH)  # two batches a step: one a process, or two accumulated by one
PAIR_ID = re.compile(r"question (\d+)")  # learnable_pairs' prompts are numbered


# ---------------------------------------------------------------- the driver, in each process


def recorder(record: dict, path: Path, crash_after_step: int | None):
    """A Trainer callback: the pair ids each training forward pass saw, by step; the weights' hash after each step."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            record["world_size"] = args.world_size

            def seen(module, positional, keyword):
                if module.training:  # not the evaluations'
                    text = " ".join(processing_class.batch_decode(keyword["input_ids"]))
                    step = record["batches"].setdefault(str(state.global_step + 1), [])
                    step += sorted({int(i) for i in PAIR_ID.findall(text)})

            model.register_forward_pre_hook(seen, with_kwargs=True)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            digest = hashlib.sha256()
            for _, parameter in sorted(model.state_dict().items()):
                digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
            record["weights"][str(state.global_step)] = digest.hexdigest()
            path.write_text(json.dumps(record))
            if state.global_step == crash_after_step:  # the step after a checkpoint: every rank saved it
                os.kill(os.getpid(), signal.SIGKILL)

    return Recorder()


def drive(job_file: str) -> None:
    import pandas as pd
    from transformers import Trainer

    from rm_pipeline.lib.training.run import train_reward_model
    from rm_pipeline.lib.training.settings import TrainingSettings

    job = json.loads(Path(job_file).read_text())
    rank = int(os.environ.get("RANK", "0"))
    path = Path(job["out"]) / f"rank{rank}.json"
    record = {"batches": {}, "weights": {}, "logs": [], "model_dir": None}
    callback = recorder(record, path, job["crash_after_step"])
    train = Trainer.train

    def train_recorded(self, *args, **kwargs):  # instrumentation only: the trainer is the one the run builds
        self.add_callback(callback)
        return train(self, *args, **kwargs)

    Trainer.train = train_recorded
    try:
        result = train_reward_model(
            pd.read_parquet(job["train"]),
            pd.read_parquet(job["evaluation"]),
            TrainingSettings(**job["settings"]),
            Path(job["models_dir"]),
            job["run_name"],
            report=lambda kind, payload: record["logs"].append(payload.get("message")) if kind == "log" else None,
        )
    finally:
        Trainer.train = train  # the single-process reference runs in the test's own process
    record["model_dir"] = str(result.model_dir) if result.metrics else None  # only rank 0 returns metrics
    path.write_text(json.dumps(record))


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def base_model(tiny_encoder, tmp_path_factory) -> Path:
    """The tiny BERT without dropout: one process's second micro-batch draws other dropout masks than rank 1's
    first, which no data-parallel scheme can match."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("no_dropout")
    model = BertForSequenceClassification.from_pretrained(
        tiny_encoder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(folder)
    return folder


def launch(tmp: Path, name: str, processes: int, settings: dict, crash_after_step: int | None = None):
    """The driver as `processes` processes, launched as the training launcher launches the worker; one process is
    the reference, driven in this one."""
    out = tmp / name
    out.mkdir()
    job = {
        "train": str(tmp / "train.parquet"),
        "evaluation": str(tmp / "evaluation.parquet"),
        "settings": settings,
        "models_dir": str(tmp / f"models-{processes}"),
        "run_name": "rm-multi",
        "out": str(out),
        "crash_after_step": crash_after_step,
    }
    (out / "job.json").write_text(json.dumps(job))
    if processes == 1:  # the reference: one process is this one (no interpreter and imports to start)
        drive(str(out / "job.json"))
        return None, [json.loads((out / "rank0.json").read_text())]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    command = launch_command(sys.executable, processes, ["-m", DRIVER, str(out / "job.json")])
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    records = [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]
    return done, records


@pytest.fixture(scope="module")
def runs(base_model, tmp_path_factory):
    """One process accumulating 2 batches a step; 2 processes killed the step after their first checkpoint;
    the same 2 processes launched again.

    Why they match (transformers 5.25, accelerate 1.16, TRL 1.16): accelerate deals the sampler's batches to the
    processes in turn (batch 2k to rank 0, 2k+1 to rank 1), which one process accumulating 2 batches trains in the
    same step; RewardTrainer divides the loss by the accumulation steps (`loss_is_scaled_for_ga = False`) and DDP
    averages the gradients, so both take the mean. Length grouping sorts megabatches of 50 x batch x accumulation
    pairs: one megabatch for both here (32 pairs); on larger sets the two would order pairs differently."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    learnable_pairs(TRAIN_PAIRS).to_parquet(tmp / "train.parquet")
    learnable_pairs(8, start=100).to_parquet(tmp / "evaluation.parquet")
    settings = dict(
        base_model=str(base_model),
        max_length=64,
        epochs=1.0,
        learning_rate=3e-2,
        warmup_ratio=0.0,
        batch_size=BATCH,
        eval_steps=CHECKPOINT_EVERY,
        logging_steps=1,
        early_stopping_patience=None,
        precision="fp32",  # exact arithmetic to compare with: bf16 would add its own rounding to the differences
        seed=0,
    )
    _, [single_record] = launch(tmp, "single", 1, {**settings, "gradient_accumulation_steps": 2})
    crashed, crashed_records = launch(tmp, "crashed", 2, settings, crash_after_step=CHECKPOINT_EVERY + 1)
    models_dir = tmp / "models-2"
    left_by_the_crash = sorted(str(path.relative_to(models_dir)) for path in models_dir.rglob("*") if path.is_dir())
    checkpoint_files = sorted(path.name for path in models_dir.glob(f".checkpoints/*/checkpoint-{CHECKPOINT_EVERY}/*"))
    resumed, resumed_records = launch(tmp, "resumed", 2, settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {
        "single": single_record,
        "crashed": (crashed, crashed_records),
        "resumed": resumed_records,
        "models_dir": models_dir,
        "left_by_the_crash": left_by_the_crash,
        "checkpoint_files": checkpoint_files,
    }


def test_each_process_trains_on_its_own_shard_of_every_step(runs):
    _, (rank0, rank1) = runs["crashed"]
    assert rank0["world_size"] == rank1["world_size"] == 2
    for step in range(1, CHECKPOINT_EVERY + 2):  # the crashed run's steps, up to the kill
        mine, theirs = set(rank0["batches"][str(step)]), set(rank1["batches"][str(step)])
        assert len(mine) == len(theirs) == BATCH, step
        assert not mine & theirs, step
        # together, what one process accumulating two batches trained on at that step
        assert mine | theirs == set(runs["single"]["batches"][str(step)]), step
    # over the resumed run's steps too: each pair once, the whole train split
    for step in range(CHECKPOINT_EVERY + 1, STEPS + 1):
        assert not set(runs["resumed"][0]["batches"][str(step)]) & set(runs["resumed"][1]["batches"][str(step)])
    trained = [
        pair
        for records, steps in (
            (runs["crashed"][1], range(1, CHECKPOINT_EVERY + 1)),
            (runs["resumed"], range(CHECKPOINT_EVERY + 1, STEPS + 1)),
        )
        for record in records
        for step in steps
        for pair in record["batches"][str(step)]
    ]
    assert sorted(trained) == list(range(TRAIN_PAIRS))


def test_gradients_are_synchronised_so_both_processes_hold_the_same_weights_after_each_step(runs):
    for records in (runs["crashed"][1], runs["resumed"]):
        rank0, rank1 = records
        assert rank0["weights"] and rank0["weights"] == rank1["weights"]
    weights = runs["crashed"][1][0]["weights"]
    assert len(set(weights.values())) == len(weights)  # and they change: steps really update them


def test_a_crash_after_a_checkpoint_publishes_nothing_and_the_relaunch_resumes_from_it(runs):
    crashed, records = runs["crashed"]
    assert crashed.returncode != 0
    assert all(record["model_dir"] is None for record in records)
    checkpoint = f".checkpoints/rm-multi/checkpoint-{CHECKPOINT_EVERY}"
    assert runs["left_by_the_crash"] == [".checkpoints", ".checkpoints/rm-multi", checkpoint]  # no model, no staging
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= set(runs["checkpoint_files"])
    rank0, _ = runs["resumed"]
    assert any(f"checkpoint-{CHECKPOINT_EVERY}" in message for message in rank0["logs"] if "resuming" in message)
    assert min(int(step) for step in rank0["batches"]) == CHECKPOINT_EVERY + 1  # nothing trained twice
    assert max(int(step) for step in rank0["weights"]) == STEPS


def test_only_the_first_process_publishes_one_whole_model(runs):
    rank0, rank1 = runs["resumed"]
    assert rank1["model_dir"] is None
    published = Path(rank0["model_dir"])
    assert [path.name for path in runs["models_dir"].iterdir()] == [published.name]  # no staging, no checkpoints
    assert (published / "model.safetensors").exists() and (published / "training_metrics.json").exists()


def distance(first: dict, second: dict) -> float:
    return sum(float(((first[name] - second[name]) ** 2).sum()) for name in first) ** 0.5


def test_the_published_model_equals_one_process_accumulating_the_same_batches(runs, base_model):
    """Compared as a whole: Adam turns a gradient that is zero but for rounding (the head's bias, which the pair
    loss cancels) into a full learning-rate step of either sign, so single weights may differ by ~lr while the
    models agree. The runs differ by 0.2% of how far training moved the weights (fp32, summation order)."""
    import pandas as pd

    from rm_pipeline.lib.model_files import SCORED_FILE

    single, multi = (Path(path) for path in (runs["single"]["model_dir"], runs["resumed"][0]["model_dir"]))
    start, single_weights, multi_weights = map(state_dict_of, (base_model, single, multi))
    assert set(single_weights) == set(multi_weights)
    assert distance(multi_weights, single_weights) < 0.01 * distance(single_weights, start)
    # the rewards each run scored the eval split with as it published
    single_rewards, multi_rewards = (pd.read_parquet(path / SCORED_FILE)["reward"] for path in (single, multi))
    torch.testing.assert_close(
        torch.tensor(multi_rewards.to_numpy()), torch.tensor(single_rewards.to_numpy()), atol=2e-2, rtol=0
    )


def test_the_reward_model_asset_trains_through_the_worker_in_two_processes(
    annotations_slice, storage_root, tiny_encoder, monkeypatch
):
    """The subprocess launcher with processes 2 ($RM_PIPELINE_TRAINING_PROCESSES): the real worker under
    accelerate on this machine's CPUs; rank 0 alone talks to Dagster and publishes."""
    import dagster as dg

    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline.training_launcher import SubprocessTrainingLauncher

    monkeypatch.setenv("RM_PIPELINE_TRAINING_PROCESSES", "2")
    defs = build_defs(str(storage_root), str(annotations_slice), tiny_encoder)
    assert defs.resources["training_launcher"] == SubprocessTrainingLauncher(processes=2)
    up_to_training = (dg.AssetSelection.assets("reward_model").upstream().required_multi_asset_neighbors()).resolve(
        defs.resolve_asset_graph()
    )
    batch = 16
    config = {"ops": {"reward_model": {"config": {"batch_size": batch, "early_stopping_patience": None}}}}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(reward_pipeline_job.name).execute_in_process(
            instance=instance, asset_selection=list(up_to_training), run_config=config, raise_on_error=False
        )
        assert result.success
        [materialization] = [
            event.event_specific_data.materialization
            for event in result.all_events
            if event.is_step_materialization and event.step_key == "reward_model"
        ]
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    batches = -(-metadata["train_pairs"] // batch)
    assert metadata["steps"] == -(-batches // 2)  # one epoch, two batches a step: one in each process
    [model] = [path for path in (storage_root / "models").iterdir() if path.name.startswith("rm-")]
    assert metadata["model_path"] == str(model)
    assert (model / "model.safetensors").exists()
    assert not list((storage_root / "models").glob(".*"))  # no staging folder, no checkpoints left


if __name__ == "__main__":
    drive(sys.argv[1])
