"""Stage 3: comparisons to chosen/rejected pairs; every rejected one keeps its reason."""

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import OWNERS, counts_table, gate_result, histogram, preview, table_output
from rm_pipeline.asset_outputs import PAIRS_GROUP as GROUP
from rm_pipeline.config import config_class
from rm_pipeline.lib import gates
from rm_pipeline.lib.pairs import PairSettings, build_pairs, rejection_counts, tie_pairs
from rm_pipeline.resources import BaseModelResource

PairsConfig = config_class(PairSettings, "PairsConfig")


@dg.multi_asset(
    outs={
        "preference_pairs": dg.AssetOut(
            description="Chosen/rejected pairs that pass every rule.", kinds={"pandas", "parquet"}, owners=OWNERS
        ),
        "rejected_pairs": dg.AssetOut(
            description="Comparisons that didn't become pairs, each with its reason.",
            kinds={"pandas", "parquet"},
            owners=OWNERS,
        ),
    },
    group_name=GROUP,
    code_version="2",
)
def pair_validation(
    context: dg.AssetExecutionContext,
    config: PairsConfig,
    base_model: BaseModelResource,
    aggregated_preferences: pd.DataFrame,
    review_queue: pd.DataFrame,
):
    """Apply the pair rules: tie/abstention, empty prompt or candidate, context mismatch, identical
    candidates, disputed, duplicate, too long. With tie_handling soft a tie is kept as a tie pair
    (preference 0.5)."""
    kept, rejected = build_pairs(
        aggregated_preferences,
        review_queue["item_id"],
        base_model.token_lengths,
        base_model.max_length,
        config.include_disputed,
        config.tie_handling,
    )
    reasons = rejection_counts(rejected)
    ties = int(tie_pairs(kept).sum())
    context.log.info(
        f"{len(aggregated_preferences)} comparisons -> {len(kept)} pairs kept ({ties} tie pairs), "
        f"{len(rejected)} rejected {reasons}"
    )
    yield table_output(
        kept,
        output_name="preference_pairs",
        metadata={
            "comparisons_in": len(aggregated_preferences),
            "tie_pairs": ties,  # kept with preference 0.5 (tie_handling soft)
            "tie_handling": config.tie_handling,
            "max_length": base_model.max_length,
            "base_model": base_model.name_or_path,
            **({"trust_remote_code": True} if base_model.trust_remote_code else {}),  # honoured: its code ran
            "longest_pair_tokens": int(kept[["chosen_tokens", "rejected_tokens"]].max().max()) if len(kept) else 0,
            "chosen_share_histogram": histogram(kept["chosen_share"]),
            "preview": preview(kept, ["pair_id", "prompt", "chosen", "rejected", "domain"]),
        },
    )
    yield table_output(
        rejected,
        output_name="rejected_pairs",
        metadata={
            "reasons": counts_table(reasons),
            "preview": preview(rejected, ["item_id", "reason", "detail"]),
        },
    )


@dg.asset_check(
    asset="preference_pairs",
    additional_ins={"rejected_pairs": dg.AssetIn(), "aggregated_preferences": dg.AssetIn()},
    blocking=True,
    description="Great Expectations: every kept pair obeys the rules and is preferred (1) or a tie (0.5); "
    "kept + rejected = comparisons in.",
)
def preference_pairs_rules_hold(
    base_model: BaseModelResource, preference_pairs, rejected_pairs, aggregated_preferences
):
    return gate_result(
        gates.preference_pairs_gate(
            preference_pairs, rejected_pairs, aggregated_preferences, max_length=base_model.max_length
        )
    )
