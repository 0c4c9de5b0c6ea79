"""rate_interval: Wilson where values stand alone, a cluster bootstrap where they share groups."""

import numpy as np
import pytest

from rm_pipeline.lib.evaluation.statistics import rate_interval, wilson_interval


def test_wilson_matches_the_textbook_case():
    # 8 of 10 at 95%: Wilson's score interval is [0.490, 0.943] (Newcombe 1998, table I method 3)
    interval = wilson_interval(8, 10)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.4902, abs=1e-4) and interval.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_stays_inside_zero_and_one_and_is_not_degenerate_at_the_edges():
    none, every = wilson_interval(0, 20), wilson_interval(20, 20)
    assert none.low == 0.0 and 0.0 < none.high < 0.2
    assert every.high == 1.0 and 0.8 < every.low < 1.0


def test_rate_interval_uses_wilson_for_independent_values_and_counts_a_tie_as_half():
    values = np.array([1, 1, 0.5, 0, 1, 1, 1, 0, 1, 0.5])  # 7 successes in 10
    interval = rate_interval(values, groups=[f"p{i}" for i in range(10)])
    assert interval == wilson_interval(7, 10)


def test_rate_interval_widens_when_values_share_a_prompt():
    """The same 0/1 pattern, once as 200 independent pairs and once as 20 prompts of 10 identical pairs."""
    rng = np.random.default_rng(0)
    per_prompt = rng.integers(0, 2, 20).astype(float)
    values = np.repeat(per_prompt, 10)
    independent = rate_interval(values)
    clustered = rate_interval(values, groups=np.repeat(np.arange(20), 10))
    assert clustered.groups == 20 and independent.groups == 200
    assert clustered.estimate == independent.estimate
    assert (clustered.high - clustered.low) > 2 * (independent.high - independent.low)


def test_rate_interval_refuses_values_outside_zero_and_one():
    with pytest.raises(ValueError, match="between 0 and 1"):
        rate_interval([0.2, 1.5])
