"""Gates cannot be sidestepped, and runs on one storage root never mix: on a real Dagster instance."""

import hashlib
import shutil

import dagster as dg
import pytest

from rm_pipeline.definitions import build_defs

UP_TO_SPLIT = ["raw_annotations", "annotation_quarantine", "aggregated_preferences", "review_queue",
               "preference_pairs", "rejected_pairs", "preference_split"]
DOWNSTREAM = ["aggregated_preferences", "review_queue", "preference_pairs", "rejected_pairs", "preference_split"]
GARBAGE = ['{"item_id": "x1", "prompt": "p", "response_a": "r1", "response_b": "r2", "annotator_id": "v", '
           '"vote": "a"}'] * 2 + ["{not json"] * 8  # 80% unreadable: over the 20% raw_annotations_valid allows


def materialize(storage_root, annotations, instance, selection):
    defs = build_defs(str(storage_root), str(annotations))
    return dg.materialize([*defs.assets, *defs.asset_checks], selection=selection, resources=defs.resources,
                          instance=instance, raise_on_error=False)


def published(storage_root) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((storage_root / "tables").glob("*.parquet"))}


def failure_messages(result) -> str:
    """Every step failure's error with its causes, as a user reads them."""
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                texts.append(f"{event.step_key}: {error.cls_name}: {error.message}")
                error = error.cause
    return "\n".join(texts)


@pytest.fixture
def bad_annotations(annotations_slice, tmp_path):
    folder = tmp_path / "bad_annotations"
    shutil.copytree(annotations_slice, folder)
    (folder / "vendor_batch_7.jsonl").write_text("\n".join(GARBAGE) + "\n")
    return folder


def test_a_failed_gate_cannot_be_sidestepped_by_running_only_downstream_stages(annotations_slice, bad_annotations,
                                                                               storage_root):
    with dg.instance_for_test() as instance:
        good = materialize(storage_root, annotations_slice, instance, UP_TO_SPLIT)
        assert good.success
        before = published(storage_root)
        assert set(before) == {f"{name}.parquet" for name in UP_TO_SPLIT}
        assert not list((storage_root / "tables" / ".pending").glob("*.parquet"))  # all passed: all published

        bad = materialize(storage_root, bad_annotations, instance, UP_TO_SPLIT)
        assert not bad.success
        gates = {e.check_name: e.passed for e in bad.get_asset_check_evaluations()}
        assert gates == {"raw_annotations_valid": False}
        kept = storage_root / "tables" / "failed" / f"raw_annotations-{bad.run_id}.parquet"
        assert kept.exists()  # the failing table, for inspection
        changed = {name for name, digest in published(storage_root).items() if before[name] != digest}
        assert changed == {"annotation_quarantine.parquet"}  # no gate: it shows what went wrong

        sidestep = materialize(storage_root, annotations_slice, instance, DOWNSTREAM)
        assert not sidestep.success
        assert not sidestep.get_asset_materialization_events()
        message = failure_messages(sidestep)
        assert "GateNotPassedError" in message
        assert "raw_annotations_valid" in message and bad.run_id in message and str(kept) in message
        assert "materialise raw_annotations again" in message
        assert published(storage_root) == {**before, "annotation_quarantine.parquet":
                                           published(storage_root)["annotation_quarantine.parquet"]}

        again = materialize(storage_root, annotations_slice, instance, UP_TO_SPLIT)
        assert again.success
        assert materialize(storage_root, annotations_slice, instance, DOWNSTREAM).success
    assert published(storage_root) == before  # the same good batch: the same tables, published again


def test_a_gated_table_waits_for_its_gate_and_its_ungated_sibling_does_not(annotations_slice, storage_root):
    """A run that stops before a gate is evaluated leaves the table pending; nothing downstream reads it."""
    with dg.instance_for_test() as instance:
        # the assets without their checks: nothing evaluates raw_annotations_valid
        result = materialize(storage_root, annotations_slice, instance,
                             dg.AssetSelection.assets("raw_annotations", "annotation_quarantine").without_checks())
        assert result.success
        tables = storage_root / "tables"
        assert (tables / "annotation_quarantine.parquet").exists()
        assert not (tables / "raw_annotations.parquet").exists()
        assert (tables / ".pending" / f"raw_annotations-{result.run_id}.parquet").exists()

        downstream = materialize(storage_root, annotations_slice, instance, ["aggregated_preferences"])
        assert not downstream.success
        message = failure_messages(downstream)
        assert "has not been through its gate raw_annotations_valid" in message and result.run_id in message
