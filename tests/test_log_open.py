"""An activation's opening read in one script call (`store.log_open`): the lease, the snapshot, the log
after it and the inbox after the cursor, against a real Redis and a Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from store.events import AnswerCompleted, UserMessage
from store.exceptions import LeaseHeld
from store.log import EMPTY_ID, READ_PAGE_ENTRIES, ConversationLog, conv_keys
from store.log_open import open_activation
from store.redis import sync_client

pytestmark = pytest.mark.cluster


@pytest.fixture
def log(redis_url: str) -> Iterator[ConversationLog]:
    client = sync_client(redis_url)
    yield ConversationLog(client)
    client.close()


def test_an_unknown_conversation_opens_to_nothing_and_nothing_is_written(log: ConversationLog) -> None:
    assert open_activation(log, "nobody", "worker-a") is None
    keys = conv_keys("nobody")
    assert not log.client.exists(keys.lease) and not log.client.exists(keys.epoch)


def test_the_opening_read_is_what_the_separate_reads_return(log: ConversationLog) -> None:
    first = log.post_inbox("c1", UserMessage(text="first"))
    opened = open_activation(log, "c1", "worker-a")
    assert opened is not None and opened.snapshot is None and opened.tail == []
    assert opened.inbox_cursor == EMPTY_ID and [i for i, _ in opened.inbox] == [first.inbox_id]
    lease = opened.lease
    ids = log.append(lease, [UserMessage(text="first", turn=1), AnswerCompleted(text="a", turn=1)],
                     inbox_cursor=first.inbox_id)  # fmt: skip
    log.save_snapshot(lease, b"state", ids[0])
    second = log.post_inbox("c1", UserMessage(text="second"))
    log.release(lease)

    opened = open_activation(log, "c1", "worker-b")
    assert opened is not None and opened.lease.epoch == lease.epoch + 1 and opened.lease.owner == "worker-b"
    assert opened.snapshot is not None and (opened.snapshot.state, opened.snapshot.last_event_id) == (
        b"state", ids[0],
    )  # fmt: skip
    assert opened.tail == log.read("c1", after_id=ids[0])
    assert opened.inbox_cursor == first.inbox_id
    assert opened.inbox == log.inbox_after("c1", first.inbox_id) and opened.inbox[0][0] == second.inbox_id
    with pytest.raises(LeaseHeld) as held:
        open_activation(log, "c1", "worker-c")
    assert held.value.details["owner"] == "worker-b"


def test_a_tail_longer_than_a_page_is_read_on(log: ConversationLog) -> None:
    lease = log.acquire("c2", "worker-a")
    ids = log.append(lease, [UserMessage(text=f"q{n}", turn=n) for n in range(READ_PAGE_ENTRIES + 5)])
    log.release(lease)
    opened = open_activation(log, "c2", "worker-a")
    assert opened is not None and [i for i, _ in opened.tail] == ids
