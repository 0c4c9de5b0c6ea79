"""The house rules, checked on the code itself: public Dagster APIs only, small modules and functions, and the
import layers of pyproject's [tool.importlinter] contracts."""

import ast
import subprocess
import sys
from pathlib import Path

from rm_pipeline_tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "rm_pipeline"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST | None = None) -> str:
    line = f":{node.lineno}" if node is not None else ""
    return f"{path.relative_to(REPO_ROOT)}{line}"


def test_rm_pipeline_imports_no_private_dagster_module():
    private = []
    for path in modules():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            hits = [name for name in names if name.startswith("dagster._")]
            if hits:
                private.append(f"{where(path, node)} {hits[0]}")
    assert not private, "private Dagster imports:\n" + "\n".join(private)


def test_no_module_is_over_600_lines():
    long = []
    for path in modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{where(path)} {lines} lines")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_is_over_80_lines():
    long = []
    for path in modules():
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # from `def` to the body's last line
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{where(path, node)} {node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_import_layers_hold():
    """pyproject's contracts: cli -> definitions -> stages -> resources -> publishing -> lib, and lib is pure."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_loading_the_definitions_imports_neither_torch_nor_great_expectations():
    """Every process that loads the definitions (UI, daemon, each run, each CLI call) would pay seconds for them:
    they are imported where a model runs or a gate validates."""
    heavy = ("torch", "great_expectations", "transformers", "trl")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, rm_pipeline.definitions; print([m for m in {heavy!r} if m in sys.modules])",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
