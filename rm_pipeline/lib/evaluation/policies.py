"""Fresh policy outputs (AlpacaEval format): mean reward per policy and its rank correlation with a leaderboard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rm_pipeline.lib.evaluation.statistics import (
    CONFIDENCE,
    correlation_with_interval,
    spearman,
)


def read_policy_outputs(folder: str | Path) -> pd.DataFrame:
    """AlpacaEval-format policy outputs as one frame: policy, idx, dataset, instruction, output.

    ``folder`` holds ``prompts.jsonl`` (idx, dataset, instruction) and ``model_outputs/<policy>.jsonl``
    (idx, output, ...); the policy is the file stem.
    """
    folder = Path(folder)
    prompts = pd.read_json(folder / "prompts.jsonl", lines=True)[["idx", "dataset", "instruction"]]
    frames = []
    for path in sorted((folder / "model_outputs").glob("*.jsonl")):
        outputs = pd.read_json(path, lines=True, dtype={"output": str})[["idx", "output"]]
        frames.append(outputs.assign(policy=path.stem))
    columns = ["policy", "idx", "dataset", "instruction", "output"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).merge(prompts, on="idx", how="left")[columns]


def policy_reward_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Per policy (index): n, mean_reward, mean_tokens, from scored outputs (policy, reward, tokens)."""
    return scored.groupby("policy").agg(
        n=("reward", "size"), mean_reward=("reward", "mean"), mean_tokens=("tokens", "mean")
    )


def policy_ranking(
    mean_reward_by_policy: pd.Series, leaderboard_column: pd.Series, confidence: float = CONFIDENCE
) -> dict:
    """Spearman correlation between policies' mean reward and a leaderboard column (both indexed by policy).

    Only policies present in both with a value count; ``missing`` lists the scored policies the
    leaderboard lacks. rho is NaN for fewer than 3 common policies. ``spearman_rho_interval`` resamples
    the policies themselves (``interval_over``): with a handful of policies it is wide, and honestly so.
    """
    rewards = mean_reward_by_policy.dropna()
    board = leaderboard_column.dropna()
    board = board[~board.index.duplicated()]
    common = [policy for policy in rewards.index if policy in board.index]
    rho, p_value = spearman(rewards.loc[common], board.loc[common])
    return {
        "n_policies": len(common),
        "spearman_rho": rho,
        "spearman_rho_interval": correlation_with_interval(
            rewards.loc[common], board.loc[common], confidence=confidence
        ),
        "interval_over": f"a bootstrap over the {len(common)} policies",
        "spearman_p": p_value,
        "policies": common,
        "missing": [policy for policy in rewards.index if policy not in board.index],
    }


def read_leaderboard(path: str | Path, column: str) -> pd.Series | None:
    """One numeric column of an AlpacaEval leaderboard CSV (policy name in the first column), indexed by
    policy and named after the column; None when there is no such file (no leaderboard to compare with).

    Raises ``ValueError`` naming the file: for a file that is not a CSV table, for a missing column (with
    the columns the file has) and for a value that is not a number (with its line). Blank cells are missing
    values, which ``policy_ranking`` leaves out.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        board = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a leaderboard CSV ({error})") from None
    if column not in board.columns:
        raise ValueError(f"{path}: no column {column!r}; it has {', '.join(board.columns)}")
    text = board[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        position = int(bad.to_numpy().argmax())
        raise ValueError(f"{path}: line {position + 2}: {column}: {text.iloc[position]!r} is not a number")
    return values.astype(float).rename(column)
