"""Test doubles for Docent, public and small: what tests, benches and `docent chaos` stand up instead of
the outside world. None of them is used by a production code path.

  `ScriptedLLM` / `ScriptedLLMThread`   a deterministic OpenAI-compatible chat server over real HTTP; it
                                        reads each request's messages as a model would (`transcript`)
                                        and plays scripted replies and faults (`scripts`)
  `SmtpSink`, `HttpSink`, `SinkThread`  a mail relay and an idempotent external API that count effects
                                        per Message-ID / Idempotency-Key, with injectable `Faults`
  `RandomExit`                          a runtime crash hook (`Runtime.crash`) that kills the worker
                                        process at the crash points; `chaos_worker` is a worker using it

  `McpTicketServer` (`actors.testing.mcp_server`, not imported here: the SDK is slow to import)
                                        an MCP server (the SDK's MCPServer) in a subprocess, one read-only
                                        tool and one write that honours the idempotency key in `_meta`

Standalone: `python -m actors.testing.scripted_llm --scripts FILE`, `python -m actors.testing.sinks`,
`python -m actors.testing.mcp_server --port 8765`.
"""

from actors.testing.crash import RandomExit
from actors.testing.http_sink import HttpAttempt, HttpSink
from actors.testing.scripted_llm import ScriptedLLM, ScriptedLLMThread
from actors.testing.scripts import Fault, Script, ScriptedCall, ScriptFile, Step, as_script_file, load_scripts
from actors.testing.sink_faults import Faults
from actors.testing.sinks import SinkThread
from actors.testing.smtp_sink import ReceivedMail, SmtpSink

__all__ = [
    "Fault",
    "Faults",
    "HttpAttempt",
    "HttpSink",
    "RandomExit",
    "ReceivedMail",
    "Script",
    "ScriptFile",
    "ScriptedCall",
    "ScriptedLLM",
    "ScriptedLLMThread",
    "SinkThread",
    "SmtpSink",
    "Step",
    "as_script_file",
    "load_scripts",
]
