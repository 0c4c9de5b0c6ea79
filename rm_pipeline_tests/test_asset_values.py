"""The values assets hand each other: stored as JSON under the storage root, read back typed, and checked to
belong together (a report of one model is never judged against another)."""

import json

import dagster as dg
import pandas as pd
import pytest

from rm_pipeline.asset_outputs import report_of, scored_in
from rm_pipeline.io_managers import AssetValueIOManager
from rm_pipeline.lib.asset_values import SCORED_BY, SCORED_IN, EvaluationReport, PublishedModel, from_json, to_json
from rm_pipeline.resources import PipelineStorage

MODEL = PublishedModel(path="/models/rm-a", split_data_version="abc123", precision="bf16")


def test_a_value_is_stored_as_json_and_an_input_gets_it_back_typed(tmp_path):
    storage = PipelineStorage(root=str(tmp_path))

    @dg.asset(io_manager_key="values")
    def model() -> PublishedModel:
        return MODEL

    @dg.asset(io_manager_key="values")
    def verdict(model: PublishedModel) -> dict:
        assert model == MODEL and isinstance(model, PublishedModel)
        return {"model": model.name, "ready": False}

    result = dg.materialize([model, verdict], resources={"values": AssetValueIOManager(storage=storage)})
    assert result.success
    stored = json.loads((tmp_path / "values" / "model.json").read_text())
    assert stored == {
        "type": "PublishedModel",
        "value": {"path": "/models/rm-a", "split_data_version": "abc123", "precision": "bf16"},
    }
    assert json.loads((tmp_path / "values" / "verdict.json").read_text())["value"] == {"model": "rm-a", "ready": False}


def test_an_input_never_materialised_names_the_asset_to_materialise(tmp_path):
    manager = AssetValueIOManager(storage=PipelineStorage(root=str(tmp_path)))
    context = dg.build_input_context(upstream_output=dg.build_output_context(asset_key=dg.AssetKey("reward_model")))
    with pytest.raises(FileNotFoundError, match="materialise reward_model first"):
        manager.load_input(context)


def test_only_declared_value_types_and_dicts_are_stored():
    assert from_json(to_json(MODEL)) == MODEL
    with pytest.raises(TypeError, match="must be one of PublishedModel"):
        to_json(["a", "list"])


def test_scores_of_another_model_are_refused_with_what_to_do():
    scores = pd.DataFrame({SCORED_BY: ["rm-old"], SCORED_IN: ["fp32"]})
    with pytest.raises(dg.Failure, match="scored by rm-old, not by rm-a.*materialise reward_scores again"):
        scored_in(MODEL, scores)
    assert scored_in(MODEL, scores.assign(**{SCORED_BY: "rm-a"})) == "fp32"


def test_a_report_of_another_model_is_refused(tmp_path):
    report = tmp_path / "evaluation_report.json"
    report.write_text(json.dumps({"report": {}}))
    of_old = EvaluationReport("/models/rm-old", str(report), str(tmp_path / "evaluation_report.md"))
    with pytest.raises(dg.Failure, match="is of /models/rm-old, not of /models/rm-a"):
        report_of(MODEL, of_old)
    assert report_of(MODEL, EvaluationReport(MODEL.path, str(report), "")) == {"report": {}}
