"""Scoring (prompt, response) pairs with a reward model: batched, length-sorted, no gradient.

Knows nothing of Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rm_pipeline.lib.annotations import is_message_list, role_problems
from rm_pipeline.lib.length_calibration import read_length_calibration, remove_length_effect
from rm_pipeline.lib.model_files import (
    ENSEMBLE_FILE,
    SCORED_FILE,
    WEIGHTS_FILE,
    ModelDirectoryError,
    check_model_dir,
    read_manifest,
    weights_sha256,
)
from rm_pipeline.lib.precision import SCORING_PRECISION_HELP, Precision, autocast, head_in_fp32, scores_in_bf16
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.table_files import MAX_JSON_DEPTH, json_depth_exceeds, text_problem
from rm_pipeline.lib.tokenization import check_remote_code, encode, load_tokenizer, quiet_loading, response_tokens

if TYPE_CHECKING:  # torch is imported where a model runs: the Dagster definitions load without it
    import torch


@dataclass(frozen=True)
class ScoringSettings:
    batch_size: int = setting(32, "Sequences per forward pass (sorted by length, no gradient).", minimum=1)
    precision: Precision = setting("auto", SCORING_PRECISION_HELP)
    length_calibration: bool = setting(
        False,
        "Subtract from every reward its fitted dependence on the answer's length (the model's "
        "length_calibration.json, fitted on training-side answers when it was trained; Huang et al. 2024).",
    )

    def __post_init__(self):
        check_settings(self)


SCORING_BATCH_SIZE = ScoringSettings.batch_size
# Answers of the eval split as training scored them with the finished model, saved beside it: the evaluation
# stage scores the same answers with the same model, and reads them instead.
SCORED_COLUMNS = ["prompt", "response", "conversational", "reward", "tokens", "truncated"]


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, as the training collator builds them."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def score_ids(
    model,
    sequences: list[list[int]],
    pad_token_id: int,
    batch_size: int = SCORING_BATCH_SIZE,
    sort_by_length: bool = True,
    progress: Callable[[int], None] | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """One reward per token sequence. Sorting by length keeps padding, and so wasted work, small. `bf16`: under
    bf16 autocast (with the model's head `head_in_fp32`)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(ids) for ids in sequences], kind="stable") if sort_by_length else np.arange(len(sequences))
    rewards = np.empty(len(sequences), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = pad_right([sequences[i] for i in chunk], pad_token_id)
        with torch.inference_mode(), autocast(device.type, bf16):
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        rewards[chunk] = logits[:, 0].float().cpu().numpy()
        if progress:
            progress(len(chunk))
    return rewards


def fit_to_length(ids: list[int], limit: int) -> list[int]:
    """A sequence cut to the model's position limit by dropping the oldest context: the first token
    ([CLS] / BOS) and the last ``limit - 1`` (the response and its closing token) are kept."""
    return ids if len(ids) <= limit else ids[:1] + ids[len(ids) - limit + 1 :]


def position_limit(model, tokenizer) -> int:
    """The longest sequence the model can read: its position embeddings, or the tokenizer's limit."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000]
    return min(limits) if limits else 1_000_000


def load_reward_model(model_dir: Path, trust_remote_code: bool = False):
    """The reward model saved in `model_dir`, trusted only when it is whole: `check_model_dir`, one score unit,
    every weight of its architecture in its safetensors and no other (a config.json tampered to another
    architecture would otherwise load with random weights). Never downloaded, never a pickle."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_model_dir(model_dir)
    check_remote_code(trust_remote_code)
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)
    if config.num_labels != 1:
        raise ModelDirectoryError(
            f"{model_dir}: can't be loaded as a reward model (its config.json has {config.num_labels} labels; "
            "a reward model has 1)"
        )
    with quiet_loading():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir),
            config=config,
            dtype="auto",
            trust_remote_code=trust_remote_code,
            local_files_only=True,
            use_safetensors=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # a weight of another shape is listed below, not a pointer to a report
        )
    wrong = {kind: sorted(info.get(f"{kind}_keys") or []) for kind in ("missing", "unexpected", "mismatched")}
    if any(wrong.values()):
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in wrong.items() if keys)
        example = next(keys[0] for keys in wrong.values() if keys)
        example = example[0] if isinstance(example, tuple) else example  # a mismatched one: (name, shapes...)
        raise ModelDirectoryError(
            f"{model_dir}: can't be loaded as a reward model (its weights don't match its config.json: "
            f"{counts} weights, e.g. {example})"
        )
    return model


@dataclass
class RewardScorer:
    """A trained reward model ready to score: model, tokenizer and the longest sequence it reads."""

    model: object
    tokenizer: object
    max_length: int
    batch_size: int = SCORING_BATCH_SIZE
    bf16: bool = False  # bf16 autocast, with the score head in fp32
    # (prompt, response, conversational) -> (reward, response tokens, truncated): nothing is scored twice
    scored: dict = field(default_factory=dict, repr=False)
    ignored_cache: str | None = None  # why the model's score cache wasn't used (`recall`), for the caller to say
    length_fit: dict | None = None  # the length effect subtracted from every reward (`length_calibration`)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        batch_size: int = SCORING_BATCH_SIZE,
        trust_remote_code: bool = False,
        precision: Precision = ScoringSettings.precision,
        length_calibration: bool = ScoringSettings.length_calibration,
    ) -> RewardScorer:
        """A saved model directory, checked first (`load_reward_model`), on the GPU when there is one, else the CPU,
        with its weights in the dtype they were saved in (casting them to bf16 would round rewards into ties near
        1.0); `precision` and `length_calibration` as in `ScoringSettings`. An ensemble's directory (its
        `ENSEMBLE_FILE`) loads as an `EnsembleScorer`, which scores alike."""
        if (Path(model_dir) / ENSEMBLE_FILE).is_file():
            return EnsembleScorer.load(model_dir, batch_size, trust_remote_code, precision, length_calibration)
        length_fit = read_length_calibration(Path(model_dir)) if length_calibration else None
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_reward_model(Path(model_dir), trust_remote_code).to(device)
        head_in_fp32(model)
        scorer = cls.of(model, load_tokenizer(str(model_dir), trust_remote_code), batch_size, precision)
        scorer.ignored_cache = scorer.recall(Path(model_dir) / SCORED_FILE)
        scorer.length_fit = length_fit
        return scorer

    @classmethod
    def of(
        cls, model, tokenizer, batch_size: int = SCORING_BATCH_SIZE, precision: Precision = ScoringSettings.precision
    ) -> RewardScorer:
        """A scorer around a model in memory (its head `head_in_fp32`), e.g. the one training just finished."""
        device = next(model.parameters()).device.type
        return cls(model, tokenizer, position_limit(model, tokenizer), batch_size, scores_in_bf16(precision, device))

    def remember(self, path: Path) -> None:
        """Save what was scored (with the precision it was scored in) beside the model's weights, tied to their
        sha256, for `recall` by a later scorer of this model."""
        rows = [(*key, *value) for key, value in self.scored.items()]
        table = pd.DataFrame(rows, columns=SCORED_COLUMNS).assign(bf16=self.bf16)
        table.assign(weights_sha256=weights_sha256(path.parent)).to_parquet(path, index=False)

    def recall(self, path: Path) -> str | None:
        """What `remember` saved, when it was scored in this scorer's precision by these very weights: it is not
        scored again. A cache of other weights (or none readable) is ignored, and why is returned."""
        if not path.exists():
            return None
        try:
            table = pd.read_parquet(path)
            mine = bool(table["weights_sha256"].eq(weights_sha256(path.parent)).all())
            table = table[table["bf16"] == self.bf16]
            keys = list(zip(table["prompt"], table["response"], table["conversational"].astype(bool)))
            values = zip(table["reward"].astype(float), table["tokens"].astype(int), table["truncated"].astype(bool))
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"{path}: ignored, not a score cache ({type(error).__name__}); its answers are scored again"
        if not mine:
            return f"{path}: ignored, written for other weights than {WEIGHTS_FILE}; its answers are scored again"
        self.scored.update(zip(keys, values))
        return None

    def score(
        self,
        prompts,
        responses,
        conversational,
        sort_by_length: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """One row per (prompt, response): ``reward``, ``tokens`` (the response's own length in tokens)
        and ``truncated`` (the sequence was longer than the model reads and lost its oldest context).
        A (prompt, response) this scorer has scored before, in this call or an earlier one, is not scored again."""
        keys = [
            (prompt, str(response), bool(chat)) for prompt, response, chat in zip(prompts, responses, conversational)
        ]
        new = [key for key in dict.fromkeys(keys) if key not in self.scored]
        if progress and len(keys) > len(new):
            progress(len(keys) - len(new))
        if new:
            new_prompts, new_responses, new_chat = zip(*new)
            sequences = encode(self.tokenizer, new_prompts, new_responses, new_chat)
            truncated = [len(ids) > self.max_length for ids in sequences]
            sequences = [fit_to_length(ids, self.max_length) for ids in sequences]
            rewards = score_ids(
                self.model, sequences, self.tokenizer.pad_token_id, self.batch_size, sort_by_length, progress, self.bf16
            )
            lengths = response_tokens(self.tokenizer, new_responses)
            self.scored.update(zip(new, zip(rewards.tolist(), lengths, truncated)))
        known = [self.scored[key] for key in keys]
        scored = pd.DataFrame(
            {
                "reward": np.fromiter((reward for reward, _, _ in known), dtype=np.float64, count=len(known)),
                "tokens": np.fromiter((tokens for _, tokens, _ in known), dtype="int64", count=len(known)),
                "truncated": np.fromiter((cut for _, _, cut in known), dtype=bool, count=len(known)),
            }
        )
        return self.length_calibrated(scored)

    def length_calibrated(self, scored: pd.DataFrame) -> pd.DataFrame:
        """`score`'s table with the length effect removed from ``reward`` when this scorer has one (the cache
        keeps raw rewards)."""
        if self.length_fit is None or scored.empty:
            return scored
        return scored.assign(reward=remove_length_effect(scored["reward"], scored["tokens"], self.length_fit))

    def forget(self) -> None:
        """Drop what was scored (an RL run scores new completions at every step: remembering them would grow)."""
        self.scored.clear()

    def score_pairs(self, pairs: pd.DataFrame, progress: Callable[[int], None] | None = None) -> pd.DataFrame:
        """``pairs`` (prompt, conversational, chosen, rejected, ...) with chosen_reward, rejected_reward,
        chosen_tokens and rejected_tokens (response lengths), for an ensemble chosen_uncertainty and
        rejected_uncertainty, and truncated (either side) added. Both sides are scored in one length-sorted pass."""
        n = len(pairs)
        scored = self.score(
            list(pairs["prompt"]) * 2,
            list(pairs["chosen"]) + list(pairs["rejected"]),
            list(pairs["conversational"]) * 2,
            progress=progress,
        )
        chosen, rejected = scored.iloc[:n], scored.iloc[n:]
        # an ensemble's scores carry their uncertainty (the members' std): kept per side
        columns = ["reward", "tokens", "uncertainty"] if "uncertainty" in scored else ["reward", "tokens"]
        return pairs.assign(
            **{
                f"{side}_{column}": part[column].to_numpy()
                for column in columns
                for side, part in (("chosen", chosen), ("rejected", rejected))
            },
            truncated=chosen["truncated"].to_numpy() | rejected["truncated"].to_numpy(),
        )


# ---------------------------------------------------------------- best-of-N candidates


class CandidateFileError(ValueError):
    """A candidates file with lines that can't be scored; the message names each file, line and field."""


def _candidate_text(value):
    """A candidate is text, or an assistant message ({"role", "content"})."""
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return value if isinstance(value, str) else None


def _record_problems(record: dict) -> list[str]:
    """Each field of a candidates record that can't be scored, as `field: problem`; ingestion's rules for text
    and message roles."""
    prompt, candidates = record.get("prompt"), record.get("candidates")
    if not (isinstance(prompt, str) and prompt.strip()) and not is_message_list(prompt):
        problems = ["prompt: must be non-empty text or a list of {role, content} messages"]
    else:
        text = text_problem(prompt)
        if text is None and isinstance(prompt, list):
            text = role_problems(pd.Series([prompt], dtype=object), "prompt", answer=False).iloc[0]
        problems = [f"prompt: {text}"] if isinstance(text, str) else []
    if not isinstance(candidates, list) or not candidates:
        return [*problems, "candidates: must be a non-empty list"]
    bad = [i for i, candidate in enumerate(candidates) if _candidate_text(candidate) is None]
    if bad:
        problems.append(
            f"candidates[{bad[0]}]: must be text or a {{role, content}} message"
            + (f" ({len(bad)} such candidates)" if len(bad) > 1 else "")
        )
    for i, candidate in enumerate(candidates):
        if isinstance(candidate, dict) and candidate.get("role", "assistant") != "assistant":
            problems.append(
                f"candidates[{i}]: a candidate message is the assistant's, not a {candidate['role']!r} message"
            )
        elif (problem := text_problem(_candidate_text(candidate))) is not None:
            problems.append(f"candidates[{i}]: {problem}")
    return problems


# Deeper JSON is no record of ours, and Python's parser would exhaust the stack on it (~1,000 levels).
def read_candidates(path: str | Path, max_errors: int = 20) -> list[dict]:
    """JSONL records ``{"prompt": text or [{"role", "content"}, ...], "candidates": [text, ...], ...}``.

    Every line is checked before anything is scored; all problems (up to ``max_errors``) are raised
    together, each as ``file:line: field: problem``. Blank lines are skipped.
    """
    records, errors = [], []
    try:
        with open(path, "rb") as lines:
            numbered = list(enumerate(lines, start=1))
    except OSError as error:
        raise CandidateFileError(f"{path}: can't be read: {error.strerror}") from error
    for number, raw in numbered:
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            errors.append(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line)")
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 BOM, as annotation files may start with
        if not line.strip():
            continue
        if json_depth_exceeds(line):
            errors.append(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{where}: not valid JSON ({error.msg})")
            continue
        if not isinstance(record, dict):
            errors.append(f"{where}: a line must be a JSON object")
            continue
        errors += [f"{where}: {problem}" for problem in _record_problems(record)]
        records.append(record)
    if errors:
        shown = "\n".join(errors[:max_errors]) + (
            f"\n... {len(errors) - max_errors} more" if len(errors) > max_errors else ""
        )
        raise CandidateFileError(f"{len(errors)} problem(s) in {path}:\n{shown}")
    return records


def rank_candidates(
    scorer: RewardScorer, records: list[dict], progress: Callable[[int], None] | None = None
) -> list[dict]:
    """Each record with ``rewards`` (one per candidate, input order), for an ensemble ``uncertainties`` (the
    members' std, alike), and ``ranking`` (candidate indices, best first; equal rewards keep input order). All
    candidates of all records are scored together, in
    length-sorted batches."""
    prompts, responses, conversational = [], [], []
    for record in records:
        chat = isinstance(record["prompt"], list)
        prompt = json.dumps(record["prompt"], ensure_ascii=False) if chat else record["prompt"]
        prompts += [prompt] * len(record["candidates"])
        responses += [_candidate_text(candidate) for candidate in record["candidates"]]
        conversational += [chat] * len(record["candidates"])
    scored = scorer.score(prompts, responses, conversational, progress=progress)
    rewards = scored["reward"].to_numpy()
    ranked, start = [], 0
    for record in records:
        mine = slice(start, start + len(record["candidates"]))
        start = mine.stop
        extra = {"uncertainties": scored["uncertainty"].iloc[mine].tolist()} if "uncertainty" in scored else {}
        ranked.append(
            {
                **record,
                "rewards": [float(r) for r in rewards[mine]],
                **extra,
                "ranking": [int(i) for i in np.argsort(-rewards[mine], kind="stable")],
            }
        )
    return ranked


# ---------------------------------------------------------------- TRL online trainers


def trl_reward_function(
    model_dir: str | Path,
    batch_size: int = SCORING_BATCH_SIZE,
    precision: Precision = ScoringSettings.precision,
    length_calibration: bool = ScoringSettings.length_calibration,
) -> Callable[..., list[float]]:
    """Our model as a reward function for TRL's GRPO/RLOO trainers (``reward_funcs=[...]``).

    TRL can load a reward model directory itself, but it scores ``prompt + completion`` as one text
    without special tokens, which an encoder (like the default MiniLM) was not trained on. This
    function scores exactly as training and evaluation do, for encoders and decoders alike. Prompts
    are text or message lists; completions are text or message lists ending in the reply. An ensemble's
    directory gives its conservative score (mean - λ·std of its members).
    """
    scorer = RewardScorer.load(model_dir, batch_size, precision=precision, length_calibration=length_calibration)

    def reward(prompts: list, completions: list, **_) -> list[float]:
        chat = [isinstance(prompt, list) for prompt in prompts]
        texts = [
            json.dumps(prompt, ensure_ascii=False) if is_chat else prompt for prompt, is_chat in zip(prompts, chat)
        ]
        replies = [_candidate_text(c[-1] if isinstance(c, list) else c) for c in completions]
        rewards = scorer.score(texts, replies, chat)["reward"].tolist()
        scorer.forget()
        return rewards

    reward.__name__ = Path(model_dir).name  # TRL logs rewards under the function's name
    return reward


# ---------------------------------------------------------------- an ensemble of reward models


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class EnsembleScorer:
    """An ensemble's members (`RewardScorer`s) scoring as one model: ``reward`` is mean - λ·std of theirs,
    ``uncertainty`` their std; `score`, `score_pairs` and `forget` as `RewardScorer`'s."""

    members: list
    weight: float  # λ
    length_fit: dict | None = None  # the ensemble's own length effect, on its conservative score
    ignored_cache: str | None = None

    score_pairs = RewardScorer.score_pairs
    length_calibrated = RewardScorer.length_calibrated

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        batch_size: int = SCORING_BATCH_SIZE,
        trust_remote_code: bool = False,
        precision=ScoringSettings.precision,
        length_calibration: bool = ScoringSettings.length_calibration,
    ) -> EnsembleScorer:
        """Every member of the ensemble in `model_dir`, each checked as a model directory; a member that can't be
        loaded is a ModelDirectoryError in one line naming it."""
        from rm_pipeline.lib.length_calibration import read_length_calibration

        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        members = []
        for index, member in enumerate(manifest["members"]):
            where = model_dir / member["path"]
            try:
                if (where / ENSEMBLE_FILE).exists():
                    raise ModelDirectoryError("an ensemble can't be a member of an ensemble")
                members.append(RewardScorer.load(where, batch_size, trust_remote_code, precision))
            except (ModelDirectoryError, OSError, ValueError, KeyError, RuntimeError) as error:
                raise ModelDirectoryError(
                    f"{model_dir}: ensemble member {index} ({member['path']}) can't be loaded: {_first_line(error)}"
                ) from None
        ignored = "; ".join(member.ignored_cache for member in members if member.ignored_cache) or None
        length_fit = read_length_calibration(model_dir) if length_calibration else None
        return cls(members, float(manifest["lambda"]), length_fit, ignored)

    @property
    def bf16(self) -> bool:
        return self.members[0].bf16

    def score(
        self,
        prompts,
        responses,
        conversational,
        sort_by_length: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """`RewardScorer.score`'s table, ``reward`` being the conservative score, plus ``uncertainty`` (the
        members' std). Tokens are the first member's count; ``truncated`` when any member cut the sequence."""
        prompts, responses, conversational = list(prompts), list(responses), list(conversational)
        share = None if progress is None else _shared_progress(progress, len(self.members))
        tables = [member.score(prompts, responses, conversational, sort_by_length, share) for member in self.members]
        rewards = np.stack([table["reward"].to_numpy(float) for table in tables])
        mean, spread = rewards.mean(axis=0), rewards.std(axis=0)
        scored = tables[0].assign(
            reward=mean - self.weight * spread,
            truncated=np.logical_or.reduce([table["truncated"].to_numpy(bool) for table in tables]),
            uncertainty=spread,
        )
        return self.length_calibrated(scored)

    def forget(self) -> None:
        for member in self.members:
            member.forget()


def _shared_progress(progress: Callable[[int], None], members: int) -> Callable[[int], None]:
    """A callback for each member's scoring that reports whole answers to `progress`: all members' counts
    together, divided by the number of members."""
    counted = {"sequences": 0, "reported": 0}

    def update(count: int) -> None:
        counted["sequences"] += count
        done = counted["sequences"] // members
        if done > counted["reported"]:
            progress(done - counted["reported"])
            counted["reported"] = done

    return update
