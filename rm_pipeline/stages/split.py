"""Stage 4: train/eval split grouped by prompt, stratified by domain, stable as data arrives."""

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import OWNERS, gate_result, table_output
from rm_pipeline.asset_outputs import SPLIT_GROUP as GROUP
from rm_pipeline.config import config_class
from rm_pipeline.lib import gates
from rm_pipeline.lib.asset_values import DATA_VERSION
from rm_pipeline.lib.fingerprints import split_data_version
from rm_pipeline.lib.split import NO_DOMAIN, SplitSettings, split_by_group

SplitConfig = config_class(SplitSettings, "SplitConfig")


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version="3", owners=OWNERS)
def preference_split(
    context: dg.AssetExecutionContext, config: SplitConfig, preference_pairs: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """The pairs with `prompt_group` and `split` (train | eval); no prompt group on both sides, where prompt ids
    that share a prompt text are one group."""
    split = split_by_group(preference_pairs, config.eval_fraction, config.seed)
    sizes = split["split"].value_counts()
    by_domain = split.assign(domain=split["domain"].fillna(NO_DOMAIN)).pivot_table(
        index="domain", columns="split", values="pair_id", aggfunc="count", fill_value=0
    )
    version = split_data_version(split)
    context.log.info(f"split {len(split)} pairs: {sizes.to_dict()} (data version {version})")
    return table_output(
        split,
        data_version=version,
        metadata={
            DATA_VERSION: version,
            "train_pairs": int(sizes.get("train", 0)),
            "eval_pairs": int(sizes.get("eval", 0)),
            "prompt_groups": int(split["prompt_group"].nunique()),
            "pairs_by_domain": dg.MetadataValue.md(by_domain.to_markdown()),
        },
    )


@dg.asset_check(
    asset=preference_split,
    blocking=True,
    description="Great Expectations: no prompt group on both sides, every domain represented.",
)
def preference_split_grouped(preference_split):
    return gate_result(gates.preference_split_gate(preference_split))
