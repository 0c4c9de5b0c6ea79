"""The `rm-pipeline` command as tests call it: a subprocess (`rm_pipeline`), as a user runs it, or in this
process (`rm_pipeline_here`) where its output, not its process, is under test; and a toy batch."""

import os
import subprocess
import sys

TOY = [  # the classic example: one good pair, one identical, one context mismatch, one tie
    {"item_id": "a", "prompt": "2+2?", "response_a": "4", "response_b": "5", "annotator_id": "u1", "vote": "a"},
    {
        "item_id": "b",
        "prompt": "Capital of France?",
        "response_a": "Paris",
        "response_b": "Paris",
        "annotator_id": "u1",
        "vote": "a",
    },
    {
        "item_id": "c",
        "prompt": "Say hi",
        "context_a": "Say hi",
        "context_b": "Say bye",
        "response_a": "hi",
        "response_b": "bye",
        "annotator_id": "u1",
        "vote": "a",
    },
    {"item_id": "d", "prompt": "Pick one", "response_a": "x", "response_b": "y", "annotator_id": "u1", "vote": "tie"},
]


def rm_pipeline(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "rm_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def rm_pipeline_here(*args, env=None):
    """`rm_pipeline` in this process, its imports already made (no interpreter to start): for commands whose
    output, not their process, is under test."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO
    from unittest.mock import patch

    from rm_pipeline.cli import main

    stdout, stderr = StringIO(), StringIO()
    with patch.dict(os.environ, env or {}), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            status = main(list(args))
        except SystemExit as refused:  # argparse's refusals
            status = refused.code
    return subprocess.CompletedProcess(args, status, stdout.getvalue(), stderr.getvalue())
