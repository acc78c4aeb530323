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


async def test_topic_names_past_kafkas_limit_are_refused_before_any_connection(monkeypatch) -> None:
    """TopicsCreatedExplicitly: a topic name over Kafka's 249 characters (a long
    DOCKET_TOPIC_PREFIX or instance id) is refused naming the settings that make it,
    before the admin client connects; Kafka said "error 17" (the thirteenth trial)."""
    from app.settings import load

    monkeypatch.setenv("DOCKET_INSTANCES", "a,b," + "i" * 240)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens: a connection would fail

    async def no_admin(*_args, **_kwargs):
        raise AssertionError("connected before checking the names")

    monkeypatch.setattr(topics, "_admin", no_admin)
    with pytest.raises(topics.TopicSettingRefused, match=r"would be 2\d\d characters, more than Kafka's 249: "
                                                          "shorten DOCKET_TOPIC_PREFIX or the instance ids"):
        await topics.create_topics(load())
    assert topics.topic_name_problem(["x" * 249]) is None
