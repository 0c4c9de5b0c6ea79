"""The models under `<root>/models/`: which one is current, switching it atomically, the promotion
decision written beside each candidate, and the listing `rm-pipeline models` prints. Knows nothing of Dagster.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from rm_pipeline.lib.asset_values import READY
from rm_pipeline.lib.evaluation.report import REPORT_JSON
from rm_pipeline.lib.model_files import FACTS_FILE, MODEL_CARD_FILE, PROMOTION_FILE, READINESS_FILE, read_json_object
from rm_pipeline.lib.promotion import NOT_PROMOTED, PROMOTED

CURRENT = "current"


def switch_current(models_dir: Path, name: str) -> Path:
    """Point `models_dir/current` at `models_dir/name` atomically: a reader sees the old model or the new one.
    The link is relative, so the storage root can move."""
    target = models_dir / name
    if not target.is_dir() or name.startswith(".") or name == CURRENT:
        raise FileNotFoundError(f"{target} is not a published model directory")
    link = models_dir / f".{CURRENT}-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name)
    os.replace(link, models_dir / CURRENT)
    return target


def broken_link(path: Path) -> str | None:
    """What is wrong with a link under `models/` that leads to no folder (dangling, or a loop); None otherwise."""
    if not path.is_symlink() or path.is_dir():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 says a loop this way
        return f"{path} is a symlink loop, not a model directory"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path} is a symlink loop, not a model directory"
        return f"{path} points at {os.readlink(path)}, which is not there (a dangling link)"
    return f"{path} points at {os.readlink(path)}, which is not a model directory"


def broken_links(models_dir: Path) -> list[str]:
    """Every link under `models/` (`current` among them) that leads to no folder, said in one line each."""
    if not models_dir.is_dir():
        return []
    return [problem for entry in sorted(models_dir.iterdir()) if (problem := broken_link(entry))]


def current_model_dir(models_dir: Path) -> Path | None:
    """The model `current` points at, or None when there is none (or it points at nothing)."""
    link = models_dir / CURRENT
    return link.resolve() if link.is_dir() else None


def _read_json(path: Path) -> dict | None:
    return _read_checked(path)[0]


def _read_checked(path: Path) -> tuple[dict | None, str | None]:
    """The JSON object in `path`, and what is wrong with it (None: fine, or no such file)."""
    try:
        return read_json_object(path, "JSON file"), None
    except ValueError as error:
        return None, str(error)


def _get(document, *keys):
    """document[k1][k2]... where each level is an object; None as soon as one is not (a hand-edited file)."""
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document


def _data_version(model_dir: Path) -> str | None:
    facts = _read_json(model_dir / FACTS_FILE)
    if facts and facts.get("data_version"):
        return str(facts["data_version"])
    try:  # models saved before training_facts.json: the model card names it
        found = re.search(r"data version of the split: `([^`]+)`", (model_dir / MODEL_CARD_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found and found.group(1) != "?" else None


def _status(model_dir: Path, is_current: bool, promotion: dict | None, problem: str | None) -> str:
    if is_current:
        return "current"
    if problem:
        return problem
    if promotion is None or promotion.get("status") not in (PROMOTED, NOT_PROMOTED):
        return "candidate (not yet evaluated)"
    if promotion["status"] == NOT_PROMOTED:
        return f"not promoted: {promotion.get('reason', 'no reason recorded')}"
    return "superseded (was current)"


def _held_out(model_dir: Path, promotion: dict | None, reports_dir: Path) -> dict | None:
    """Held-out accuracy with its interval from the promotion decision; else the evaluation report's
    accuracy, without an interval."""
    held_out = _get(promotion, "held_out", "candidate")
    numbers = [_get(held_out, key) for key in ("estimate", "low", "high")]
    if all(isinstance(number, (int, float)) for number in numbers):
        return {"accuracy": numbers[0], "interval": numbers[1:], "n": _get(held_out, "n")}
    report = _read_json(reports_dir / model_dir.name / REPORT_JSON)
    accuracy = _get(report, "report", "held_out", "accuracy")
    if not isinstance(accuracy, (int, float)):
        return None
    return {"accuracy": accuracy, "interval": None, "n": _get(report, "report", "held_out", "n")}


def _verdict(model_dir: Path) -> str:
    readiness, problem = _read_checked(model_dir / READINESS_FILE)
    if problem:
        return problem
    if readiness is None:
        return "not evaluated"
    return "ready" if readiness.get(READY) is True else "not ready"


def list_models(models_dir: Path, reports_dir: Path) -> list[dict]:
    """One row per model directory (dot-directories and `current` left out), oldest first: name, status,
    data version, held-out accuracy with its interval, readiness verdict."""
    if not models_dir.is_dir():
        return []
    current = current_model_dir(models_dir)
    rows = []
    # lstat: a dangling link or a loop is left out here (`broken_links` names it), not a crash
    for model_dir in sorted(models_dir.iterdir(), key=lambda path: (path.lstat().st_mtime, path.name)):
        if model_dir.name.startswith(".") or model_dir.name == CURRENT or not model_dir.is_dir():
            continue
        promotion, problem = _read_checked(model_dir / PROMOTION_FILE)
        rows.append(
            {
                "model": model_dir.name,
                "path": str(model_dir),
                "status": _status(model_dir, model_dir.resolve() == current, promotion, problem),
                "data_version": _data_version(model_dir),
                "held_out": _held_out(model_dir, promotion, reports_dir),
                "verdict": _verdict(model_dir),
            }
        )
    return rows


def format_models(rows: list[dict]) -> str:
    """The listing as a plain-text table."""
    if not rows:
        return "no models"

    def accuracy(held_out: dict | None) -> str:
        if not held_out:
            return "-"
        interval = held_out["interval"]
        low_high = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        return f"{held_out['accuracy']:.3f}{low_high} (n={held_out['n']})"

    table = [("model", "data version", "held-out accuracy [interval]", "verdict", "status")] + [
        (row["model"], row["data_version"] or "?", accuracy(row["held_out"]), row["verdict"], row["status"])
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1] for line in table
    )
