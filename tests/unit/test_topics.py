"""app/topics.py's wait for the broker to list the topics it created (spec
TopicsCreatedExplicitly), against a stand-in for the admin client: pure logic, no
broker (tests/integration creates topics on a real one)."""

from __future__ import annotations

import logging

import pytest

from app import topics


class ListingAdmin:
    """An admin client whose listing shows ``shown`` from its ``after``-th call on."""

    def __init__(self, shown: list[str], after: int = 0) -> None:
        self.shown, self.after, self.calls = shown, after, 0

    async def list_topics(self) -> list[str]:
        self.calls += 1
        return self.shown if self.calls > self.after else []


async def test_topics_listed_a_moment_late_are_waited_for_quietly(caplog) -> None:
    """TopicsCreatedExplicitly: it returns once the broker lists what it created."""
    admin = ListingAdmin(["d.input", "d.results"], after=3)
    with caplog.at_level(logging.WARNING, logger="docket.topics"):
        await topics._listed(admin, ["d.input", "d.results"])
    assert admin.calls == 4
    assert not caplog.records


async def test_topics_never_listed_are_named_in_a_warning(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """TopicsCreatedExplicitly: topics the broker does not list after SETTLE_S are
    named in a WARNING that says what to do; the wait still ends."""
    monkeypatch.setattr(topics, "SETTLE_S", 0.3)
    admin = ListingAdmin(["d.input"])
    with caplog.at_level(logging.WARNING, logger="docket.topics"):
        await topics._listed(admin, ["d.results", "d.input", "d.entities"])
    assert admin.calls >= 2
    [record] = caplog.records
    message = record.getMessage()
    assert "the broker created d.entities, d.results but does not list them after 0 s" in message
    assert "docket topics create" in message
