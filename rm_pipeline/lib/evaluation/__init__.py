"""Evaluation of a scored reward model, one module per job; pure functions over already-scored data.

A scored pairs frame has one row per pair with the columns

    pair_id, chosen_reward, rejected_reward, chosen_tokens, rejected_tokens, domain

plus, when known, ``chosen_share`` and ``n_votes`` (agreement of the annotators) and ``subset``
(RewardBench-format benchmark files). Every accuracy, rate and correlation ``name`` comes with
``name_interval`` (``statistics.Interval.as_dict``) at ``statistics.CONFIDENCE``: rates from
``rate_interval`` (a cluster bootstrap over prompts where pairs share one, Wilson otherwise), correlations
and weighted scores from ``bootstrap_interval`` over prompts. Ties count half (``accuracy``).
Knows nothing of Dagster or of the model.
"""
