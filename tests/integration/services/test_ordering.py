"""Pause order: dependents before their dependencies, diamond-safe and deterministic; resume is the reverse."""

from __future__ import annotations

import itertools

import pytest

from include.pgmaint.services import pause_order, resume_order
from tests.fixtures.services import build_config


def flags(*specs: tuple[str, list[str]]) -> list[dict]:
    return [{"name": name, "kind": "flag", "depends_on": deps} for name, deps in specs]


DIAMOND = flags(("D", []), ("C", ["D"]), ("B", ["D"]), ("A", ["B", "C"]))  # A->B, A->C, B->D, C->D


def test_diamond():
    cfg = build_config("pgmaint", DIAMOND)
    # ties (B, C) are broken by the order of the services section: C is listed before B here
    assert pause_order(cfg, ["A", "B", "C", "D"]) == ["A", "C", "B", "D"]
    assert resume_order(cfg, ["A", "B", "C", "D"]) == ["D", "B", "C", "A"]


@pytest.mark.parametrize("names", list(itertools.permutations(["A", "B", "C", "D"])))
def test_diamond_order_does_not_depend_on_the_input_order(names):
    cfg = build_config("pgmaint", flags(("A", ["B", "C"]), ("B", ["D"]), ("C", ["D"]), ("D", [])))
    assert pause_order(cfg, names) == ["A", "B", "C", "D"]


def test_every_dependent_paused_before_its_dependency():
    specs = flags(
        ("api", []),
        ("logger", ["api"]),
        ("sync", ["logger", "api"]),
        ("fn", ["sync"]),
        ("cron", []),
        ("reports", ["sync", "cron"]),
    )
    cfg = build_config("pgmaint", specs)
    order = pause_order(cfg, [s["name"] for s in specs])
    for s in specs:
        for dep in s["depends_on"]:
            assert order.index(s["name"]) < order.index(dep)


def test_transitive_dependency_through_a_service_not_paused():
    cfg = build_config("pgmaint", flags(("B", []), ("X", ["B"]), ("A", ["X"])))
    assert pause_order(cfg, ["B", "A"]) == ["A", "B"]  # A needs X needs B


def test_subset_duplicates_and_unknown():
    cfg = build_config("pgmaint", DIAMOND)
    assert pause_order(cfg, ["D", "B", "B"]) == ["B", "D"]
    assert pause_order(cfg, []) == []
    with pytest.raises(KeyError, match="'ghost'"):
        pause_order(cfg, ["A", "ghost"])
