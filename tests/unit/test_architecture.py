"""The house rules that keep the code's dependencies pointing one way, checked by walking the code.

- Only `include/pgmaint/airflow/` imports Airflow (at any depth, lazily or not): the engine runs and
  is tested without it.
- The configuration package imports nothing of the engine but `intervals` and `naming`: config is
  at the bottom, everything else reads it (no config <-> escalation circle).
- Engine modules do not import the Airflow package at module level (they may call it at the moment
  they need a connection or a provider's notifier).
- DAG files import, at parse time, only the light modules listed here (the rest inside tasks).
- No function body over 40 statements (about 60 lines of this code before the formatter wraps long
  calls one argument per line) without a comment saying why it stays whole (`# whole: ...`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "include" / "pgmaint"
ENGINE = sorted(p for p in PKG.rglob("*.py") if "airflow" not in p.relative_to(PKG).parts)
LONG = 40  # statements, nested ones included: a size the formatter's line wrapping does not change


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_engine_never_imports_airflow():
    found = [
        f"{_rel(p)}:{line} imports {mod}"
        for p in ENGINE
        for line, mod in _imports(p)
        if mod == "airflow" or mod.startswith("airflow.")
    ]
    assert found == [], "move Airflow code into include/pgmaint/airflow/:\n" + "\n".join(found)


def test_the_engine_reaches_the_airflow_package_only_at_call_time():
    found = [
        f"{_rel(p)}:{line} imports {mod}"
        for p in ENGINE
        for line, mod in _imports(p, top_level_only=True)
        if mod.startswith("include.pgmaint.airflow")
    ]
    assert found == [], "\n".join(found)


def test_the_config_package_depends_on_nothing_of_the_engine():
    allowed = ("include.pgmaint.config", "include.pgmaint.intervals", "include.pgmaint.naming")
    found = [
        f"{_rel(p)}:{line} imports {mod}"
        for p in sorted((PKG / "config").rglob("*.py"))
        for line, mod in _imports(p)
        if mod.startswith("include.") and not mod.startswith(allowed)
    ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("dag_file", sorted((REPO / "dags").glob("*.py")), ids=lambda p: p.name)
def test_dag_files_import_only_light_modules_at_parse_time(dag_file):
    light = {
        "include.pgmaint.fleet",
        "include.pgmaint.config",
        "include.pgmaint.airflow.callbacks",
        "include.pgmaint.airflow.assets",
    }
    found = [
        mod for _, mod in _imports(dag_file, top_level_only=True) if mod.startswith("include.") and mod not in light
    ]
    assert found == [], f"{dag_file.name}: import these inside the task that needs them: {found}"


def test_long_functions_say_why_they_stay_whole():
    found = []
    for p in sorted(PKG.rglob("*.py")):
        lines = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            size = len({n.lineno for b in body for n in ast.walk(b) if isinstance(n, ast.stmt)})
            if size > LONG and "# whole:" not in "\n".join(lines[node.lineno - 1 : body[0].end_lineno + 1]):
                found.append(f"{_rel(p)}:{node.lineno} {node.name} ({size} statements)")
    assert found == [], "split these, or say why they stay whole (# whole: ...) near the top:\n" + "\n".join(found)
