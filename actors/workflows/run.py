"""One workflow run as the planner sees it: the folded turn, its definition, the request's inputs. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from actors.state import TurnState
from actors.workflows.definitions import Definition, Step
from actors.workflows.inputs import Inputs
from store.events import ToolResult


def kind(step: Step) -> str:
    return str(type(step).__struct_config__.tag)


def call_id(index: int, step: Step) -> str:
    """The id of step `index`'s tool call: fixed by the definition, so a replay finds its records."""
    return f"wf{index}-{kind(step)}"


@dataclass(frozen=True)
class Run:
    turn: TurnState
    definition: Definition
    inputs: Inputs
    writer: bool  # the configured model writes text (summaries); else extractive, labelled as such
    model: str = ""

    def result(self, index: int) -> ToolResult | None:
        return self.turn.results.get(call_id(index, self.definition.steps[index]))

    def results_of(self, step_type: type) -> list[tuple[int, ToolResult]]:
        """(index, result) of every recorded step of this type, in step order."""
        found = []
        for index, step in enumerate(self.definition.steps):
            result = self.result(index)
            if isinstance(step, step_type) and result is not None:
                found.append((index, result))
        return found
