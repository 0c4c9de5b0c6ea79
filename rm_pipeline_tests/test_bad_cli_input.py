"""Bad input to the `rm-pipeline` command: a clear message naming the problem and a distinct exit
status, never a traceback. One row per case; add a row for each new case.

Each row: the arguments (``{tmp}`` is the test's folder, ``{model}`` a tiny trained-shape reward
model), the files to create first (path under ``{tmp}`` -> text or bytes), the exit status expected
(2: bad usage, caught by argparse; 3: bad input) and a fragment its stderr must hold.
"""

import json

import pytest

from rm_pipeline_tests.support.cli import TOY, rm_pipeline

GOOD_CANDIDATES = json.dumps({"prompt": "2+2?", "candidates": ["4", "5"]}) + "\n"
DEEP_LINE = "[" * 10_000 + "]" * 10_000 + "\n"  # Python's JSON parser overflows its stack on this
PAIRS = json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n"

CASES = {
    # score: paths are checked before anything is scored
    "score: missing input": (
        ["score", "--model", "{model}", "--input", "{tmp}/missing.jsonl"],
        {},
        3,
        "missing.jsonl: can't be read",
    ),
    "score: input not UTF-8": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES.encode() + b'{"prompt": "caf\xe9", "candidates": ["a"]}\n'},
        3,
        "in.jsonl:2: not valid UTF-8",
    ),
    "score: a line nested 10,000 levels deep": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES + DEEP_LINE},
        3,
        "in.jsonl:2: JSON nested deeper than 64 levels",
    ),
    "score: output in a missing folder": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl", "--output", "{tmp}/nowhere/out.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES},
        3,
        "out.jsonl: can't be written: No such file or directory",
    ),
    "score: output is a folder": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl", "--output", "{tmp}"],
        {"in.jsonl": GOOD_CANDIDATES},
        3,
        "is a folder, not a file to write",
    ),
    "score: batch size 0": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl", "--batch-size", "0"],
        {"in.jsonl": GOOD_CANDIDATES},
        2,
        "--batch-size: must be a whole number of at least 1, not '0'",
    ),
    "score: negative batch size": (
        ["score", "--model", "{model}", "--input", "{tmp}/in.jsonl", "--batch-size", "-1"],
        {"in.jsonl": GOOD_CANDIDATES},
        2,
        "--batch-size: must be a whole number of at least 1, not '-1'",
    ),
    "score: model folder without config.json": (
        ["score", "--model", "{tmp}", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES},
        3,
        "not a model directory (no config.json)",
    ),
    "score: empty config.json": (
        ["score", "--model", "{tmp}/model", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES, "model/config.json": ""},
        3,
        "model/config.json: not a readable model configuration",
    ),
    "score: config.json not JSON": (
        ["score", "--model", "{tmp}/model", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES, "model/config.json": "{nope"},
        3,
        "model/config.json: not a readable model configuration",
    ),
    "score: config.json not an object": (
        ["score", "--model", "{tmp}/model", "--input", "{tmp}/in.jsonl"],
        {"in.jsonl": GOOD_CANDIDATES, "model/config.json": "[]"},
        3,
        "not a model configuration (a JSON object expected, not a list)",
    ),
    # evaluate
    "evaluate: batch size 0": (
        ["evaluate", "--model", "{model}", "--pairs", "{tmp}/pairs.jsonl", "--batch-size", "0"],
        {"pairs.jsonl": PAIRS},
        2,
        "--batch-size: must be a whole number of at least 1",
    ),
    "evaluate: config.json without a model type": (
        ["evaluate", "--model", "{tmp}/model", "--pairs", "{tmp}/pairs.jsonl"],
        {"pairs.jsonl": PAIRS, "model/config.json": "{}"},
        3,
        "can't be loaded as a reward model",
    ),
    "evaluate: every row quarantined": (
        ["evaluate", "--model", "{model}", "--pairs", "{tmp}/pairs.jsonl"],
        {"pairs.jsonl": json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "4"}) + "\n"},
        3,
        "pairs.jsonl: no usable pairs (all 1 rows quarantined)",
    ),
    # run: the run config is checked before anything runs
    "run: missing config": (
        ["run", "--home", "{tmp}/home", "--config", "{tmp}/missing.yaml"],
        {},
        3,
        "missing.yaml: can't be read",
    ),
    "run: config not YAML": (
        ["run", "--home", "{tmp}/home", "--config", "{tmp}/run.yaml"],
        {"run.yaml": "ops: [\n"},
        3,
        "run.yaml: not YAML or JSON (",
    ),
    "run: config not a mapping": (
        ["run", "--home", "{tmp}/home", "--config", "{tmp}/run.yaml"],
        {"run.yaml": "- ops\n"},
        3,
        "run.yaml: not a run config (a mapping",
    ),
    "run: a misspelt setting": (
        ["run", "--home", "{tmp}/home", "--config", "{tmp}/run.yaml"],
        {"run.yaml": "ops:\n  reward_model:\n    config:\n      epoch: 2\n"},
        3,
        'run.yaml: not a valid run config for reward_pipeline_job: Received unexpected config entry "epoch" at path '
        "root:ops:reward_model:config",
    ),
    "run: a setting of the wrong type": (
        ["run", "--home", "{tmp}/home", "--config", "{tmp}/run.yaml"],
        {"run.yaml": "ops:\n  reward_model:\n    config:\n      epochs: two\n"},
        3,
        'Invalid scalar at path root:ops:reward_model:config:epochs. Value "two"',
    ),
    # validate
    "validate: missing file": (["validate", "{tmp}/missing.jsonl"], {}, 3, "missing.jsonl: can't be read"),
    "validate: header-only CSV": (
        ["validate", "{tmp}/votes.csv"],
        {"votes.csv": "item_id,prompt,response_a,response_b,annotator_id,vote\n"},
        0,
        "",
    ),
    "validate: every comparison tied": (
        ["validate", "{tmp}/votes.jsonl"],
        {"votes.jsonl": json.dumps(TOY[3]) + "\n"},
        0,
        "",
    ),
}


@pytest.mark.parametrize("argv, files, status, message", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_named_with_a_distinct_status(argv, files, status, message, tmp_path, tiny_encoder):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = rm_pipeline(*[arg.format(tmp=tmp_path, model=tiny_encoder) for arg in argv])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == status, done.stderr[-3000:]
    assert message in done.stderr
    if status == 3:
        assert f"rm-pipeline {argv[0]}: " in done.stderr
