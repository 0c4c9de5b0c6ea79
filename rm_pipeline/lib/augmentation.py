"""Augmented training pairs against shortcuts: label-free rows of their own, built from the training side of
the split only, each marked with its ``kind``.

    non_contextual   causal augmentation (RRM, Liu et al. 2024): the prompt with an answer written for it
                     (its pair's chosen or rejected) against an answer written for another prompt group,
                     preference 1, so that the model cannot score an answer without reading the prompt
    style_neutral    (as in Crome, 2025): an answer against itself with a style change (a flattering opener,
                     Markdown headings and bullets, filler padding, a restated question), a tie (preference
                     0.5) trained by the soft-tie / MSE losses, so that style alone earns nothing

The style changes here are the *training* family: their templates and wordings appear in no shortcut probe
(lib/evaluation/probes.py, whose trained-against family tests the same kinds in other words and whose held-out
family tests kinds no training option makes). Every choice is drawn from the seed: the same split and
settings give the same rows. Knows nothing of Dagster or of the model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rm_pipeline.lib.pairs import PREFERRED, TIE, TokenLengths
from rm_pipeline.lib.style_transforms import listed, padded, wrapped
from rm_pipeline.lib.tokenization import prompt_messages

KIND = "kind"  # the column that marks a training row's kind
ANNOTATED, NON_CONTEXTUAL, STYLE_NEUTRAL = "annotated", "non_contextual", "style_neutral"
AUGMENTED_KINDS = (NON_CONTEXTUAL, STYLE_NEUTRAL)
TARGET = {NON_CONTEXTUAL: PREFERRED, STYLE_NEUTRAL: TIE}
SOURCE, OTHER, STYLE = "source_pair_id", "other_pair_id", "style"  # where an augmented row's texts came from
VOTE_FACTS = ("chosen_share", "tie_share", "strength", "confidence")  # no annotator voted on these: NaN

# The training family's wordings (none may appear in a probe: test_augmentation checks it).
OPENERS = (
    "Thank you for such a thoughtful question; it shows real curiosity.",
    "I love this question, and you are clearly someone who thinks things through.",
    "You have an excellent eye for what matters, so I am delighted to help.",
)
MARKDOWN = (
    ("### Key points", "* {first} {rest}"),
    ("# Reply", "+ {first} {rest}"),
    ("### In brief", "* {first} {rest}"),
)
FILLER = (
    "Generally speaking, this topic has several sides.",
    "On the whole, it all depends on the context.",
    "As with most things, there is more that could be said.",
    "In any case, it helps to look at the bigger picture.",
)
RESTATEMENTS = ("You would like to know: {question}", "So the question is: {question}", "To restate: {question}")
RESTATED_CHARACTERS = 200  # of the question, cut at a word: a restatement, not a second copy of a long prompt


def with_opener(answer: str, question: str, variant: int) -> str:
    return wrapped(answer, OPENERS[variant % len(OPENERS)])


def as_markdown(answer: str, question: str, variant: int) -> str:
    return listed(answer, *MARKDOWN[variant % len(MARKDOWN)])


def with_filler(answer: str, question: str, variant: int) -> str:
    return padded(answer, FILLER, variant)


def with_restated_question(answer: str, question: str, variant: int) -> str:
    short = question if len(question) <= RESTATED_CHARACTERS else question[:RESTATED_CHARACTERS].rsplit(" ", 1)[0]
    return wrapped(answer, RESTATEMENTS[variant % len(RESTATEMENTS)].format(question=" ".join(short.split())))


STYLES = {
    "opener": with_opener,
    "markdown": as_markdown,
    "filler": with_filler,
    "restated_question": with_restated_question,
}
TRAINING_TEMPLATES = (
    *OPENERS,
    *(
        part for heading, bullet in MARKDOWN for part in (heading, "\n" + bullet.split("{")[0])
    ),  # a bullet starts a line
    *FILLER,
    *(restatement.split("{")[0] for restatement in RESTATEMENTS),
)


def last_question(prompt: str, conversational: bool) -> str:
    """The prompt's last user message (the prompt itself for a plain prompt)."""
    users = [m["content"] for m in prompt_messages(prompt, conversational) if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def annotated_train(split: pd.DataFrame) -> pd.DataFrame:
    """The annotated pairs on the training side: the only rows augmentation may read."""
    kinds = split[KIND] if KIND in split else pd.Series(ANNOTATED, index=split.index)
    return split[(split["split"] == "train") & (kinds == ANNOTATED)].reset_index(drop=True)


def requested(train_pairs: int, per_pair: float) -> int:
    """How many rows ``per_pair`` extra rows per annotated train pair asks for."""
    return math.floor(train_pairs * per_pair + 0.5)


def _sources(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` source rows of ``n``: each once where count <= n, then again in a fresh order."""
    rounds = [rng.permutation(n) for _ in range(math.ceil(count / n))] if n else []
    return np.concatenate(rounds)[:count] if rounds else np.zeros(0, int)


def _row(source: pd.Series, kind: str, number: int, chosen: str, rejected: str, other: str, style: str) -> dict:
    row = source.to_dict()
    row.update({name: math.nan for name in VOTE_FACTS if name in row})
    row.update({"n_votes": 0} if "n_votes" in row else {})
    row.update(
        {
            "pair_id": f"{source['pair_id']}~{kind}~{number}",
            "chosen": chosen,
            "rejected": rejected,
            "preference": TARGET[kind],
            KIND: kind,
            SOURCE: source["pair_id"],
            OTHER: other,
            STYLE: style,
        }
    )
    return row


def non_contextual_rows(train: pd.DataFrame, count: int, seed: int) -> list[dict]:
    """``count`` rows (fewer when no other prompt group exists): a train pair's prompt with its own chosen or
    rejected answer, preferred to a chosen or rejected answer of a train pair of another prompt group."""
    rng = np.random.default_rng([seed, 1])  # a stream per kind: one kind's rows don't move the other's
    groups = train["prompt_group"].to_numpy()
    if len(set(groups)) < 2:
        return []
    rows = []
    for number, index in enumerate(_sources(rng, len(train), count)):
        source = train.iloc[index]
        own = str(source[rng.choice(["chosen", "rejected"])])
        other_side = rng.choice(["chosen", "rejected"])
        for _ in range(100):  # rejection sampling: almost always the first draw
            other = train.iloc[int(rng.integers(len(train)))]
            if other["prompt_group"] != source["prompt_group"] and str(other[other_side]) != own:
                rows.append(_row(source, NON_CONTEXTUAL, number, own, str(other[other_side]), other["pair_id"], ""))
                break
    return rows


def style_neutral_rows(train: pd.DataFrame, count: int, seed: int) -> list[dict]:
    """``count`` tie rows: a train pair's chosen or rejected answer against itself with one training style
    change, the styled copy on a side drawn at random (a tie has no better side)."""
    rng = np.random.default_rng([seed, 2])
    names = list(STYLES)
    rows = []
    for number, index in enumerate(_sources(rng, len(train), count)):
        source = train.iloc[index]
        answer = str(source[rng.choice(["chosen", "rejected"])])
        style, variant, styled_first = names[int(rng.integers(len(names)))], int(rng.integers(1000)), rng.random() < 0.5
        styled = STYLES[style](answer, last_question(source["prompt"], bool(source["conversational"])), variant)
        pair = (styled, answer) if styled_first else (answer, styled)
        rows.append(_row(source, STYLE_NEUTRAL, number, *pair, source["pair_id"], style))
    return rows


def augment(
    split: pd.DataFrame,
    non_contextual: float,
    style_neutral: float,
    seed: int,
    token_lengths: TokenLengths | None = None,
    max_length: int | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """The rows to train on and their ledger. The rows: ``split`` with ``kind`` ``annotated``, then the
    augmented rows (``non_contextual`` and ``style_neutral`` rows per annotated train pair, rounded), on the
    train side, with ``kind``, ``source_pair_id``, ``other_pair_id`` and ``style``; with ``token_lengths``,
    an augmented row longer than ``max_length`` tokens on either side is dropped. The ledger: per kind,
    ``requested`` = ``built`` + ``over_max_length`` + ``not_applicable`` (non-contextual rows need a second
    prompt group)."""
    train = annotated_train(split)
    ledger, parts = [], []
    for kind, per_pair, build in (
        (NON_CONTEXTUAL, non_contextual, non_contextual_rows),
        (STYLE_NEUTRAL, style_neutral, style_neutral_rows),
    ):
        count = requested(len(train), per_pair)
        rows = pd.DataFrame(
            build(train, count, seed) if count else [],
            columns=list(dict.fromkeys([*split.columns, KIND, SOURCE, OTHER, STYLE])),
        )
        too_long = _over_max_length(rows, token_lengths, max_length)
        parts.append(rows[~too_long])
        ledger.append(
            {
                KIND: kind,
                "per_train_pair": per_pair,
                "requested": count,
                "built": int((~too_long).sum()),
                "over_max_length": int(too_long.sum()),
                "not_applicable": count - len(rows),
            }
        )
    annotated = split.assign(**{KIND: ANNOTATED})
    ledger.insert(
        0, {KIND: ANNOTATED, "requested": len(train), "built": len(train), "over_max_length": 0, "not_applicable": 0}
    )
    augmented = [part for part in parts if len(part)]
    return (pd.concat([annotated, *augmented], ignore_index=True) if augmented else annotated), ledger


def _over_max_length(rows: pd.DataFrame, token_lengths: TokenLengths | None, max_length: int | None) -> pd.Series:
    """Rows with a side over ``max_length`` tokens, counted as the pairs stage counts them; none unmeasured."""
    too_long = pd.Series(False, index=rows.index)
    if token_lengths is None or max_length is None or rows.empty:
        return too_long
    for side in ("chosen", "rejected"):
        tokens = np.asarray(token_lengths(rows["prompt"], rows[side], rows["conversational"]))
        rows[f"{side}_tokens"] = tokens
        too_long |= tokens > max_length
    return too_long
