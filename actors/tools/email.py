"""send_email: high risk, always. Sent over SMTP with the idempotency key as the Message-ID.

A replayed intent (crash between "sent" and "recorded") sends again with the same key, hence the same
`Message-ID: <{key}@docent>`, so the receiving side can collapse the duplicate.
"""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage
from email.utils import formatdate
from typing import Annotated

import msgspec

from actors.tools.registry import Tool, ToolArgs, ToolContext, ToolOutput, always
from store.blocking import run_blocking
from store.exceptions import ToolError
from store.settings import Settings
from store.tool_payloads import EmailSent

MAX_RECIPIENTS = 20
MAX_SUBJECT_CHARS = 200
MAX_BODY_BYTES = 100 * 1024
SMTP_TIMEOUT_S = 20.0
MESSAGE_ID_DOMAIN = "docent"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS_PATTERN = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})*$"
SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{8,128}$")

ADDRESS = re.compile(ADDRESS_PATTERN)
# The pattern is checked in __post_init__ for a readable error; the schema still shows it to the model.
Address = Annotated[str, msgspec.Meta(max_length=254, extra_json_schema={"pattern": ADDRESS_PATTERN})]
Subject = Annotated[str, msgspec.Meta(max_length=MAX_SUBJECT_CHARS, pattern=r"^[^\r\n\x00]*$")]


class SendEmailArgs(ToolArgs, frozen=True):
    to: Annotated[
        list[Address], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS, description="recipients")
    ]
    subject: Subject
    body: Annotated[str, msgspec.Meta(max_length=MAX_BODY_BYTES)]
    html: bool = False

    def __post_init__(self) -> None:
        for n, address in enumerate(self.to):
            if not ADDRESS.match(address):
                raise ValueError(f"to[{n}] is not an email address (ASCII user@domain): {address!r}")
        size = len(self.body.encode("utf-8", "surrogatepass"))
        if size > MAX_BODY_BYTES:
            raise ValueError(f"body is {size} bytes, the limit is {MAX_BODY_BYTES}")
        if len({a.lower() for a in self.to}) != len(self.to):
            raise ValueError("`to` lists a recipient twice")


def message_id(key: str) -> str:
    if not SAFE_KEY.match(key):
        raise ToolError("send_email needs an idempotency key of 8-128 characters [A-Za-z0-9._-]")
    return f"<{key}@{MESSAGE_ID_DOMAIN}>"


def build_message(args: SendEmailArgs, sender: str, key: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(args.to)
    msg["Subject"] = args.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(key)
    msg.set_content(args.body, subtype="html" if args.html else "plain")
    return msg


def deliver(msg: EmailMessage, settings: Settings) -> dict[str, tuple[int, bytes]]:
    """Blocking: hand the message to the configured SMTP server; returns refused recipients."""
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SMTP_TIMEOUT_S) as smtp:
            return smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(sorted(exc.recipients))
        raise ToolError(
            f"the mail server refused every recipient: {refused}", reason="recipients_refused"
        ) from None
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        )
        raise ToolError(f"the mail server said {exc.smtp_code} {text}", reason="smtp_error") from None
    except smtplib.SMTPException as exc:
        raise ToolError(f"mail delivery failed: {exc}", reason="smtp_error") from None
    except TimeoutError:
        raise ToolError("the mail server timed out", reason="timeout") from None
    except OSError as exc:
        where = f"{settings.smtp_host}:{settings.smtp_port}"
        raise ToolError(f"cannot reach the mail server at {where}: {exc}", reason="unreachable") from None


async def send_email(args: SendEmailArgs, ctx: ToolContext) -> ToolOutput:
    msg = build_message(args, ctx.settings.smtp_from, ctx.idempotency_key)
    refused = await run_blocking(deliver, msg, ctx.settings)
    accepted = [a for a in args.to if a not in refused]
    text = f"Email {msg['Message-ID']} sent to {', '.join(accepted)}."
    if refused:
        text += f" Refused: {', '.join(sorted(refused))}."
    data = EmailSent(
        message_id=str(msg["Message-ID"]), accepted=tuple(accepted), refused=tuple(sorted(refused))
    )
    return ToolOutput(text=text, data=data)


SEND_EMAIL_TOOL: Tool[SendEmailArgs] = Tool(
    name="send_email",
    description="Send an email (needs a human reviewer's approval before it is sent).",
    args_type=SendEmailArgs,
    run=send_email,
    risk=always("high"),
)
