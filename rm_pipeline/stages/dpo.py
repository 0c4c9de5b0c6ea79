"""Stage 6, optional: DPO's implicit reward beside the explicit reward model, on the same held-out pairs.

Off unless `DpoPolicyResource.policy` is set (no causal model is bundled): the asset then only records that
it is not configured, reading no model, so the main job stays as fast as without it.
"""

import json

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS
from rm_pipeline.lib.asset_values import PublishedModel
from rm_pipeline.lib.dpo import (
    COMPARISON_FILE,
    DISAGREEMENTS_FILE,
    DpoInputError,
    best_device,
    compare,
    implicit_rewards,
    load_causal_lm,
)
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.markdown import markdown_table
from rm_pipeline.lib.model_files import write_atomically
from rm_pipeline.resources import DpoPolicyResource, PipelineStorage

DISAGREEMENT_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt_group",
    "domain",
    "prompt",
    "chosen",
    "rejected",
    "explicit_margin",
    "implicit_margin",
    "explicit_picks",
    "implicit_picks",
]
SHOWN_DISAGREEMENTS = 10
INTERVAL_COLUMN = f"estimate [{CONFIDENCE:.0%} interval]"
MEASURES = ("implicit_accuracy", "explicit_accuracy", "agreement", "margin_spearman")


def _shown(interval: dict) -> str:
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


@dg.asset(
    group_name=GROUP, kinds={"pytorch", "json"}, code_version="2", owners=OWNERS, io_manager_key="value_io_manager"
)
def dpo_comparison(
    context: dg.AssetExecutionContext,
    storage: PipelineStorage,
    dpo_policy: DpoPolicyResource,
    reward_model: PublishedModel,
    reward_scores: pd.DataFrame,
    preference_split: pd.DataFrame,
) -> dg.Output[dict]:
    """The held-out pairs scored by a DPO policy's implicit reward β·Σ(log πθ − log πref) over the response
    tokens, beside the reward model's scores: each one's accuracy, how often they pick the same answer and
    Spearman's ρ of their margins, with 95% intervals by prompt group; `dpo_comparison.json` and the pairs they
    disagree on (`dpo_disagreements.csv`) under `reports/<model>/`, cited by the readiness recommendation. Its
    value is the comparison (`status` "compared" or "not configured")."""
    model_dir = reward_model.directory
    folder = storage.report_folder(model_dir.name)
    if not dpo_policy.configured:
        for name in (COMPARISON_FILE, DISAGREEMENTS_FILE):  # a comparison left from an earlier run is not cited
            (folder / name).unlink(missing_ok=True)
        off = {
            "status": "not configured",
            "how": "set the dpo_policy resource's `policy` ($RM_PIPELINE_DPO_POLICY), e.g. to a policy trained "
            "by `rm-pipeline dpo-baseline`",
        }
        return dg.Output(off, metadata=off)
    held_out = reward_scores[reward_scores["source"] == "held_out"].merge(
        preference_split[["pair_id", "prompt_group"]], on="pair_id", how="left"
    )
    if held_out.empty:
        raise dg.Failure("no held-out pairs were scored: nothing to compare the DPO policy with")
    try:
        policy_path, reference_path, beta = dpo_policy.resolved()
        policy, tokenizer = load_causal_lm(policy_path, best_device())
        reference, _ = load_causal_lm(reference_path, best_device())
    except DpoInputError as error:
        raise dg.Failure(f"the DPO comparison can't run: {error}") from None
    context.log.info(f"scoring {len(held_out)} held-out pairs with {policy_path} against {reference_path} (β={beta})")
    implicit = implicit_rewards(policy, reference, tokenizer, held_out, beta, dpo_policy.batch_size)
    pairs = held_out.assign(
        explicit_chosen=held_out["chosen_reward"],
        explicit_rejected=held_out["rejected_reward"],
        implicit_chosen=implicit["chosen_reward"],
        implicit_rejected=implicit["rejected_reward"],
    )
    summary, disagreements = compare(pairs, pairs["prompt_group"].fillna(pairs["prompt_id"]))
    document = {
        "status": "compared",
        "policy": policy_path,
        "reference": reference_path,
        "beta": beta,
        "reward_model": model_dir.name,
        **summary,
    }
    write_atomically(folder / COMPARISON_FILE, json.dumps(document, indent=2))
    write_atomically(folder / DISAGREEMENTS_FILE, disagreements[DISAGREEMENT_COLUMNS].to_csv(index=False))
    return dg.Output(document, metadata=_comparison_metadata(document, disagreements, folder))


def _comparison_metadata(document: dict, disagreements: pd.DataFrame, folder) -> dict:
    """The comparison as the UI shows it: estimates, intervals and the largest disagreements."""
    shown = disagreements.head(SHOWN_DISAGREEMENTS)
    shown = shown.assign(**{c: shown[c].astype(str).str.slice(0, 80) for c in ("prompt", "chosen", "rejected")})
    return {
        "status": "compared",
        "held_out_pairs": document["n"],
        "prompt_groups": document["groups"],
        **{name: document[name]["estimate"] for name in MEASURES},
        "intervals": dg.MetadataValue.md(
            markdown_table(
                [
                    {"measure": name, f"estimate [{CONFIDENCE:.0%} interval]": _shown(document[name])}
                    for name in MEASURES
                ]
            )
        ),
        "disagreements": document["disagreements"],
        "largest_disagreements": dg.MetadataValue.md(
            markdown_table(
                shown.to_dict("records"),
                ["pair_id", "prompt", "chosen", "rejected", "explicit_margin", "implicit_margin"],
            )
        ),
        "beta": document["beta"],
        "policy": document["policy"],
        "reference": document["reference"],
        "comparison_file": dg.MetadataValue.path(str(folder / COMPARISON_FILE)),
        "disagreements_file": dg.MetadataValue.path(str(folder / DISAGREEMENTS_FILE)),
    }
