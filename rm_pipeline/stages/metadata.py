"""Asset metadata people read in the UI: counts, tables of reasons, histograms, previews."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

OWNERS = ["team:rm-pipeline"]
PREVIEW_ROWS = 10
PREVIEW_CHARS = 80


def counts_table(counts: dict, key: str = "reason") -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({key: str(name), "count": int(n)}) for name, n in counts.items()],
        schema=dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn("count", "int")]))


def histogram(values: pd.Series, bins=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999, 1.0)) -> dg.MetadataValue:
    """A text histogram: renders in the UI without an image store."""
    counts, edges = np.histogram(values.dropna(), bins=bins)
    widest = max(counts.max(), 1) if len(counts) else 1
    rows = [f"| {lo:.2f}–{hi:.2f} | {n} | {'█' * int(round(30 * n / widest))} |"
            for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    return dg.MetadataValue.md("| range | count | |\n|---|---|---|\n" + "\n".join(rows))


def preview(table: pd.DataFrame, columns: list[str]) -> dg.MetadataValue:
    head = table[columns].head(PREVIEW_ROWS).copy()
    for column in head.columns:
        if head[column].dtype == object or pd.api.types.is_string_dtype(head[column].dtype):
            head[column] = head[column].astype(str).str.slice(0, PREVIEW_CHARS).str.replace("\n", " ")
    return dg.MetadataValue.md(head.to_markdown(index=False))


def inline_png(path: Path, title: str) -> str:
    """The image itself as Markdown, so the UI shows it without access to the storage root."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def markdown_table(records: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.md(pd.DataFrame(records).to_markdown(index=False, floatfmt=".3f"))


def table_fingerprint(table: pd.DataFrame) -> str:
    """A content hash: the asset's data version, so lineage says which data a model saw."""
    hashed = pd.util.hash_pandas_object(table, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(table.columns).encode()).hexdigest()[:16]


def gate_result(gate) -> dg.AssetCheckResult:
    """A blocking check's outcome: a failed gate stops everything downstream."""
    return dg.AssetCheckResult(
        passed=gate.success, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"expectations": gate.expectations, "failed": len(gate.failures),
                  "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in gate.failures) or "none")})
