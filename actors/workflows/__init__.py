"""Declarative workflows beside the agent loop: fixed steps over the same tools, inputs extracted by code.

    flows = workflows_for(settings)                # shipped definitions plus the tenant file's
    routed = flows.route(question, default_route)  # a StartTurn: a matching workflow, else the default
    action = flows.next(turn, caps, check)         # pure: the workflow's next step from the folded state

One concept per module: `definitions` (the msgspec schema), `shipped.toml` (what Docent ships), `library`
(loading), `inputs` (what code extracts from a request), `matcher` (which workflow a request is),
`steps` (the pure planner), `answer` and `summary`
(the text a run ends with), `sources` (its citations), `orchestrator` (the hook the actor calls).
"""

from actors.workflows.orchestrator import Workflows, workflows_for

__all__ = ["Workflows", "workflows_for"]
