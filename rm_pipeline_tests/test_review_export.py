"""The review queue export is opened by people in spreadsheets: no cell may run as a formula."""

import csv
import json

import dagster as dg
import pandas as pd

from rm_pipeline.lib.aggregation import aggregate_votes, neutralise_formulas
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.resources import PipelineStorage
from rm_pipeline.stages.aggregation import ReviewConfig, review_queue

HOSTILE = ['=HYPERLINK("http://evil.example","click")', "=1+1", "@SUM(A1)", "+1", "-2+3", "\tindent", "\rreturn"]


def test_review_queue_csv_neutralises_formula_cells(tmp_path):
    batch = tmp_path / "batch.jsonl"
    rows = []
    for n, text in enumerate(HOSTILE):  # split votes: every item goes to review
        for annotator, vote in (("u1", "a"), ("u2", "b")):
            rows.append(
                {
                    "item_id": f"i{n}",
                    "prompt": text,
                    "response_a": text,
                    "response_b": "plain answer",
                    "annotator_id": annotator,
                    "vote": vote,
                    "domain": "=cmd|' /C calc'!A0",
                }
            )
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    comparisons = aggregate_votes(read_annotations([batch]).votes, "majority_vote").comparisons
    queue = review_queue(
        context=dg.build_asset_context(),
        config=ReviewConfig(),
        storage=PipelineStorage(root=str(tmp_path / "home")),
        aggregated_preferences=comparisons,
    ).value
    assert len(queue) == len(HOSTILE)
    assert queue["prompt"].tolist() == HOSTILE  # the asset itself keeps the text as it is

    with open(tmp_path / "home" / "review" / "review_queue.csv", newline="", encoding="utf-8") as export:
        exported = list(csv.DictReader(export))  # as a spreadsheet reads it: quoted line breaks stay in their cell
    assert [row["prompt"] for row in exported] == ["'" + text for text in HOSTILE]
    assert [row["response_a"] for row in exported] == ["'" + text for text in HOSTILE]
    assert {row["response_b"] for row in exported} == {"plain answer"}
    assert {row["domain"] for row in exported} == {"'=cmd|' /C calc'!A0"}
    assert {row["chosen_share"] for row in exported} == {"0.5"}  # numbers stay numbers


def test_only_text_cells_that_start_like_a_formula_are_quoted():
    table = pd.DataFrame({"text": ["-0.5", "fine", "a=b", None], "number": [-0.5, 1.0, -2.0, 3.0]})
    safe = neutralise_formulas(table)
    assert safe["text"].tolist()[:3] == ["'-0.5", "fine", "a=b"] and pd.isna(safe["text"].iloc[3])
    assert safe["number"].tolist() == [-0.5, 1.0, -2.0, 3.0] and safe["number"].dtype == float
    assert table["text"].iloc[0] == "-0.5"  # the input is left alone
