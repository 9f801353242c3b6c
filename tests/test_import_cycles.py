"""No import cycles inside any of our packages (imports inside functions and under TYPE_CHECKING count)."""

from __future__ import annotations

from tests.import_graph import all_cycles, cycles, edges


def test_the_detector_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions() -> None:
    assert "actors.llm.openai" in edges("actors")["actors.llm.backends"]


def test_no_package_has_an_import_cycle() -> None:
    assert all_cycles() == {}
