"""The training child process: `python -m rm_pipeline.training_worker`, launched by the
reward_model asset through Dagster Pipes (or `accelerate launch` with several GPUs). Its logs and
metrics stream into the Dagster run; its memory goes back to the system when it exits."""

import os
from pathlib import Path

import pandas as pd
from dagster_pipes import open_dagster_pipes

from rm_pipeline.lib.asset_values import DATA_VERSION, MODEL_PATH
from rm_pipeline.lib.markdown import inline_png
from rm_pipeline.lib.model_files import LINEAGE_FILE, TRAINING_CURVES_FILE
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings

SUMMARY_KEYS = ("step", "loss", "accuracy", "eval_accuracy", "eval_loss", "eta_s")


def run(pipes) -> None:
    extras = pipes.extras
    split = pd.read_parquet(extras["split_path"])
    settings = TrainingSettings(**extras["settings"])
    main_process = int(os.environ.get("RANK", "0")) == 0

    def report(kind: str, payload: dict) -> None:
        if main_process:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in payload.items() if k in SUMMARY_KEYS}
            pipes.log.info(f"{kind}: {payload.get('message', shown)}")

    result = train_reward_model(
        split[split["split"] == "train"],
        split[split["split"] == "eval"],
        settings,
        Path(extras["models_dir"]),
        extras["run_name"],
        report,
        card_facts={
            "data_version": extras["data_version"],
            "annotation_batches": extras["annotation_batches"],
            **extras["lineage"],
        },
    )
    if main_process:
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) and v is not None}
        pipes.report_asset_materialization(
            data_version=extras["data_version"],
            metadata={
                **metrics,
                "base_model": {"raw_value": settings.base_model, "type": "text"},
                "settings": {"raw_value": extras["settings"], "type": "json"},  # every TrainingSettings field
                MODEL_PATH: {"raw_value": str(result.model_dir), "type": "path"},
                "training_curves": {
                    "raw_value": inline_png(result.model_dir / TRAINING_CURVES_FILE, "training curves"),
                    "type": "md",
                },
                DATA_VERSION: extras["data_version"],
                # lineage: what the model was trained on, also in the model card and lineage.json
                **{
                    name: {"raw_value": extras["lineage"][name], "type": "json"}
                    for name in ("batches", "review_files", "code_versions")
                },
                "lineage_file": {"raw_value": str(result.model_dir / LINEAGE_FILE), "type": "path"},
            },
        )


if __name__ == "__main__":
    with open_dagster_pipes() as context:
        run(context)
