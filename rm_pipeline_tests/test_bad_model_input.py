"""Bad model directories, base models that aren't here, remote code, and text the tokenizer can't take: one line
on stderr and exit status 3 (a run: its failed step on one line), never a traceback, never scores from weights
that aren't the model's. One row per case; add a row for each new case (docs/bad-input.md)."""

import http.server
import json
import math
import shutil
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from rm_pipeline_tests.support.cli import TOY, rm_pipeline, rm_pipeline_here

CANDIDATES = json.dumps({"prompt": "2+2?", "candidates": ["4", "5"]}) + "\n"


def trained_shape(tiny_encoder: str, folder: Path) -> Path:
    """The tiny encoder laid out as training publishes a model: with its training_settings.json."""
    from rm_pipeline.lib.model_files import TRAINING_SETTINGS_FILE
    from rm_pipeline.lib.training.settings import TrainingSettings

    shutil.copytree(tiny_encoder, folder)
    (folder / TRAINING_SETTINGS_FILE).write_text(json.dumps(asdict(TrainingSettings(base_model=tiny_encoder))))
    return folder


class Pickled:
    """Unpickling this runs `open(marker, "w")`: a pickle that proves it was loaded by leaving a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(model: Path, marker: Path) -> None:
    import pickle

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Pickled(marker)))


def other_architecture(model: Path, marker: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="roberta", architectures=["RobertaForSequenceClassification"])
    (model / "config.json").write_text(json.dumps(config))


def two_labels(model: Path, marker: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(id2label={"0": "bad", "1": "good"}, label2id={"bad": 0, "good": 1})
    (model / "config.json").write_text(json.dumps(config))


def wider_layers(model: Path, marker: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(intermediate_size=2 * config["intermediate_size"])
    (model / "config.json").write_text(json.dumps(config))


def truncated_weights(model: Path, marker: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def pickle_only(model: Path, marker: Path) -> None:
    (model / "model.safetensors").unlink()
    plant_pickle(model, marker)


def untrained(model: Path, marker: Path) -> None:
    (model / "training_settings.json").unlink()


def base_checkpoint(model: Path, marker: Path) -> None:
    """A checkpoint without a score head (as the bundled MiniLM), with a planted training_settings.json."""
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(model)
    for name in ("model.safetensors", "config.json"):
        (model / name).unlink()
    BertModel(config).save_pretrained(model)


MODEL_CASES = {
    "config.json tampered to another architecture": (other_architecture, "weights don't match its config.json"),
    "the base checkpoint, no score head": (base_checkpoint, "weights don't match its config.json"),
    "wrong num_labels": (two_labels, "2 labels; a reward model has 1"),
    "config.json with weights of another shape": (wider_layers, "6 mismatched weights, e.g. bert.encoder.layer.0."),
    "truncated safetensors": (truncated_weights, "model.safetensors: not a safetensors file"),
    "weights only in a pickle (pytorch_model.bin)": (pickle_only, "no model.safetensors"),
    "no training_settings.json (not trained by rm-pipeline)": (untrained, "no training_settings.json"),
}


@pytest.mark.parametrize("command", ["score", "evaluate"])
@pytest.mark.parametrize("spoil, message", list(MODEL_CASES.values()), ids=list(MODEL_CASES))
def test_a_model_directory_is_checked_before_it_is_trusted(spoil, message, command, tiny_encoder, tmp_path):
    model = trained_shape(tiny_encoder, tmp_path / "model")
    marker = tmp_path / "pickle_ran"
    spoil(model, marker)
    data = tmp_path / "data.jsonl"
    if command == "score":
        data.write_text(CANDIDATES)
        done = rm_pipeline_here("score", "--model", str(model), "--input", str(data))
    else:
        data.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
        done = rm_pipeline_here("evaluate", "--model", str(model), "--pairs", str(data))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 3, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"rm-pipeline {command}: ")]
    assert len(lines) == 1 and message in lines[0] and str(model) in lines[0], done.stderr[-3000:]
    assert "LOAD REPORT" not in done.stderr and done.stdout == ""
    assert not marker.exists()  # the pickle's code never ran


def test_a_pickle_beside_the_safetensors_is_never_loaded(tiny_encoder, tmp_path):
    model = trained_shape(tiny_encoder, tmp_path / "model")
    marker = tmp_path / "pickle_ran"
    plant_pickle(model, marker)
    source = tmp_path / "in.jsonl"
    source.write_text(CANDIDATES)
    done = rm_pipeline_here("score", "--model", str(model), "--input", str(source))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists()
    assert len(json.loads(done.stdout)["rewards"]) == 2


def test_a_score_cache_is_used_only_with_the_weights_that_wrote_it(tiny_encoder, tmp_path):
    import pandas as pd
    import torch
    from transformers import BertForSequenceClassification

    from rm_pipeline.lib.model_files import SCORED_FILE
    from rm_pipeline.lib.scoring import RewardScorer

    model = trained_shape(tiny_encoder, tmp_path / "model")
    scorer = RewardScorer.load(model, precision="fp32")
    honest = scorer.score(["2+2?"], ["4"], [False])["reward"].iloc[0]
    scorer.remember(model / SCORED_FILE)  # as training does, beside the weights it saved
    assert RewardScorer.load(model, precision="fp32").scored  # the model's own cache is read
    cache = pd.read_parquet(model / SCORED_FILE)

    planted = cache.assign(reward=1000.0, weights_sha256="0" * 64)  # other scores, from other weights
    planted.to_parquet(model / SCORED_FILE, index=False)
    other = RewardScorer.load(model, precision="fp32")
    assert not other.scored and other.ignored_cache and SCORED_FILE in other.ignored_cache
    assert other.score(["2+2?"], ["4"], [False])["reward"].iloc[0] == pytest.approx(honest)
    planted.drop(columns="weights_sha256").to_parquet(model / SCORED_FILE, index=False)  # a cache without a hash
    assert not RewardScorer.load(model, precision="fp32").scored
    (model / SCORED_FILE).write_bytes(b"not parquet")
    assert not RewardScorer.load(model, precision="fp32").scored

    cache.to_parquet(model / SCORED_FILE, index=False)  # the cache of the weights below's predecessor
    torch.manual_seed(1)
    retrained = BertForSequenceClassification(scorer.model.config)
    retrained.save_pretrained(model)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": "2+2?", "candidates": ["4"]}) + "\n")
    done = rm_pipeline_here("score", "--model", str(model), "--input", str(source), "--precision", "fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = RewardScorer.of(retrained, scorer.tokenizer, precision="fp32").score(["2+2?"], ["4"], [False])
    assert json.loads(done.stdout)["rewards"][0] == pytest.approx(fresh["reward"].iloc[0], abs=1e-5)
    assert json.loads(done.stdout)["rewards"][0] != pytest.approx(honest, abs=1e-5)
    assert f"rm-pipeline: {model / SCORED_FILE}: ignored, written for other weights" in done.stderr


# ---------------------------------------------------------------- base models: never downloaded


class CountingHub(http.server.BaseHTTPRequestHandler):
    """A stand-in for the Hugging Face hub that counts the requests it gets."""

    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        CountingHub.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    CountingHub.requests.clear()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield CountingHub.requests
    server.shutdown()


def pairs_stage_tokenizer(name: str):
    from rm_pipeline.resources import BaseModelResource

    return BaseModelResource(name_or_path=name).token_lengths(["hi"], ["there"], [False])


def training_model(name: str):
    from rm_pipeline.lib.training.model import load_model
    from rm_pipeline.lib.training.settings import TrainingSettings

    return load_model(TrainingSettings(base_model=name))


@pytest.mark.parametrize("load", [pairs_stage_tokenizer, training_model], ids=["pairs stage", "training"])
def test_a_base_model_that_is_not_here_is_one_line_and_never_downloaded(load, hub):
    from rm_pipeline.lib.tokenization import ModelSourceError

    with pytest.raises(ModelSourceError) as refused:
        load("some-org/remote-model")
    assert str(refused.value) == (
        "base model 'some-org/remote-model': not a local folder or a model in the Hugging Face cache "
        "(nothing is downloaded)"
    )
    assert hub == []


def toy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "annotations"
    folder.mkdir()
    rows = [json.dumps({**TOY[0], "item_id": f"i{n}", "prompt": f"{n}+{n}?"}) for n in range(6)]
    (folder / "toy.jsonl").write_text("\n".join(rows) + "\n")
    return folder


RUN_CASES = {
    "a hub id as --base-model": (
        ["--base-model", "some-org/remote-model"],
        "",
        "base model 'some-org/remote-model': not a local folder or a model in the Hugging Face cache",
    ),
    "trust_remote_code in the run config, not allowed where the code runs": (
        [],
        "resources:\n  base_model:\n    config:\n      trust_remote_code: true\n",
        "trust_remote_code is true in the run config, but RM_PIPELINE_ALLOW_REMOTE_CODE is not 1 where the code "
        "server runs",
    ),
}


@pytest.mark.parametrize("options, config, message", list(RUN_CASES.values()), ids=list(RUN_CASES))
def test_a_run_refuses_a_base_model_it_would_have_to_fetch_or_run(options, config, message, tmp_path, hub):
    argv = ["run", "--home", str(tmp_path / "home"), "--annotations", str(toy_folder(tmp_path)), *options]
    if config:
        (tmp_path / "run.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "run.yaml")]
    done = rm_pipeline(*argv, env={"RM_PIPELINE_ALLOW_REMOTE_CODE": ""})
    assert done.returncode == 1, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert line.startswith("step pair_validation failed: ") and message in line, done.stderr[-3000:]
    assert "preference_pairs:" not in done.stdout
    assert hub == []


@pytest.mark.trains
def test_remote_code_allowed_where_the_code_runs_is_shown_in_the_summary_and_on_the_model(tmp_path, tiny_encoder):
    (tmp_path / "run.yaml").write_text("resources:\n  base_model:\n    config:\n      trust_remote_code: true\n")
    done = rm_pipeline(
        "run",
        "--home",
        str(tmp_path / "home"),
        "--annotations",
        str(toy_folder(tmp_path)),
        "--base-model",
        tiny_encoder,
        "--config",
        str(tmp_path / "run.yaml"),
        env={"RM_PIPELINE_ALLOW_REMOTE_CODE": "1"},
    )
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    summaries = {line.split(":")[0].strip(): line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert "trust_remote_code=True" in summaries["preference_pairs"]
    assert "trust_remote_code=True" in summaries["reward_model"], done.stdout


# ---------------------------------------------------------------- text given to `score`

CANDIDATE_LINES = {
    "a lone surrogate in the prompt": (
        '{"prompt": "caf\\ud800", "candidates": ["a", "b"]}',
        "in.jsonl:1: prompt: is not valid UTF-8 text",
    ),
    "a lone surrogate in a candidate": (
        '{"prompt": "hi", "candidates": ["a", "\\udc80b"]}',
        "in.jsonl:1: candidates[1]: is not valid UTF-8 text",
    ),
    "a lone surrogate in a message": (
        '{"prompt": [{"role": "user", "content": "\\ud800"}], "candidates": ["a"]}',
        "in.jsonl:1: prompt: is not valid UTF-8 text",
    ),
    "a NUL in a candidate": ('{"prompt": "hi", "candidates": ["a\\u0000"]}', "candidates[0]: holds a NUL character"),
    "a role ingestion refuses": (
        '{"prompt": [{"role": "wizard", "content": "hi"}], "candidates": ["a"]}',
        "in.jsonl:1: prompt: prompt message 1 has role 'wizard'; roles are system, user, assistant, tool",
    ),
    "a candidate message that is not the assistant's": (
        '{"prompt": "hi", "candidates": [{"role": "user", "content": "a"}]}',
        "in.jsonl:1: candidates[0]: a candidate message is the assistant's, not a 'user' message",
    ),
}


@pytest.mark.parametrize("line, message", list(CANDIDATE_LINES.values()), ids=list(CANDIDATE_LINES))
def test_score_takes_only_text_that_ingestion_takes(line, message, tmp_path):
    from rm_pipeline.lib.scoring import CandidateFileError, read_candidates

    source = tmp_path / "in.jsonl"
    source.write_text(line + "\n" + CANDIDATES, encoding="utf-8")
    with pytest.raises(CandidateFileError) as refused:
        read_candidates(source)
    assert message in str(refused.value)
    assert "1 problem(s)" in str(refused.value)  # the good line is not named


def test_score_reads_a_bom_and_writes_valid_json_for_nan_fields(tiny_encoder, tmp_path):
    model = trained_shape(tiny_encoder, tmp_path / "model")
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"prompt": "2+2?", "candidates": ["4", "5"], "weight": math.nan}),
        json.dumps({"prompt": "3+3?", "candidates": ["6"], "extra": {"bounds": [-math.inf, math.inf]}}),
    ]
    source.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    done = rm_pipeline_here("score", "--model", str(model), "--input", str(source))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in the output"))
        for line in done.stdout.splitlines()
    ]
    assert records[0]["weight"] is None and records[1]["extra"] == {"bounds": [None, None]}
    assert [len(record["rewards"]) for record in records] == [2, 1]
