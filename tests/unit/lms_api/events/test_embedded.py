"""The embedded event engine: ids, the kept events and resuming after them, the cap on streams, heartbeats, closing,
and replicas sharing events through a real Redis (and going on without it)."""

import gc
import json
import socket
import threading
import time
from contextlib import suppress

import pytest
from prometheus_client import CollectorRegistry, Counter
from pyramid.request import Request
from structlog.testing import capture_logs

from lms_api import redisstate
from lms_api.errors import ApiError, ErrorCode
from lms_api.events import EventType, event_data
from lms_api.events import embedded as engine_module
from lms_api.events.embedded import HEARTBEAT, MAX_KEPT_PER_CHANNEL, EmbeddedEvents, Event, LocalEvents
from lms_api.redisstate import RedisLink, redis_client
from lms_api.settings import load_settings
from tests.support.servers import start_redis_server
from tests.support.timing import FakeClock, eventually, join

RETRY = b"retry: 5000\n\n"
NOTE = EventType.NOTIFICATION


def open_stream(engine, *channels, last_event_id=None, query=""):
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    response = engine.stream(Request.blank(f"/api/moodle/events/stream{query}", headers=headers), channels)
    return response, iter(response.app_iter)


def fields(frame):
    """A frame's lines as a dict (data parsed), or the frame itself when it is a comment or the retry line."""
    assert frame.endswith(b"\n\n"), frame
    lines = frame.decode().removesuffix("\n\n").split("\n")
    if lines[0].startswith((":", "retry:")):
        return frame
    read = dict(line.split(": ", 1) for line in lines)
    read["data"] = json.loads(read["data"])
    if "id" in read:
        read["id"] = int(read["id"])
    return read


def next_fields(frames):
    return fields(next(frames))


def next_event(frames, heartbeats=20):
    """The next event's fields, past the heartbeats before it (failing after ``heartbeats`` of them)."""
    for _ in range(heartbeats):
        frame = next(frames)
        if frame != HEARTBEAT:
            return fields(frame)
    pytest.fail(f"no event in {heartbeats} heartbeats")


class Metrics:
    def __init__(self):
        self.events_published = Counter("published", "", ["type", "outcome"], registry=CollectorRegistry())

    def count(self, event_type, outcome):
        return self.events_published.labels(event_type, outcome)._value.get()


# -- one process ---------------------------------------------------------------------------------------------------


def test_a_frame_is_its_id_type_and_data_and_a_blank_line():
    event = Event(1733300000123, "user-3", "notification", event_data(NOTE, {"unread": 2}), 0.0)

    assert event.frame() == (b'id: 1733300000123\nevent: notification\ndata: {"type":"notification","unread":2}\n\n')
    assert Event(None, "user-3", "notification", "{}", 0.0).frame() == b"event: notification\ndata: {}\n\n"
    assert Event(1, "c", "t", "a\nb", 0.0).frame() == b"id: 1\nevent: t\ndata: a\ndata: b\n\n"


def test_ids_increase_and_are_never_below_the_time_in_milliseconds_so_a_restart_keeps_them_increasing():
    clock = FakeClock()
    events = LocalEvents(300, clock)

    first, second = events.add("user-1", "t", "{}"), events.add("user-2", "t", "{}")
    clock.advance(0.0001)
    third = events.add("user-1", "t", "{}")
    restarted = LocalEvents(300, clock)  # the same instant, in a process that knows no id
    clock.advance(0.01)

    assert first.id == int(clock.now * 1000 - 10)
    assert first.id < second.id < third.id
    assert restarted.add("user-1", "t", "{}").id >= third.id


def test_a_stream_answers_event_stream_headers_and_sends_the_retry_line_at_once(make_engine):
    response, frames = open_stream(make_engine(), "user-1")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    assert next(frames) == RETRY


def test_an_event_reaches_the_streams_of_its_channel_only(make_engine):
    engine = make_engine(heartbeat_s=0.2)
    _, mine = open_stream(engine, "user-1", "course-2")
    _, theirs = open_stream(engine, "user-9")
    assert next(mine) == next(theirs) == RETRY

    engine.publish("user-1", NOTE, {"unread": 4})
    engine.publish("course-2", EventType.COURSE_UPDATED, {"courseid": 2})

    note, course = next_fields(mine), next_fields(mine)
    assert (note["event"], note["data"]) == ("notification", {"type": "notification", "unread": 4})
    assert (course["event"], course["data"]) == ("course.updated", {"type": "course.updated", "courseid": 2})
    assert note["id"] < course["id"]
    assert next(theirs) == HEARTBEAT  # nothing of user-1's or course-2's


def test_resuming_sends_the_kept_events_of_the_streams_channels_after_the_last_id_in_id_order(make_engine):
    engine = make_engine(heartbeat_s=0.2)
    engine.publish("user-1", NOTE, {"n": 1})
    engine.publish("user-2", NOTE, {"n": 2})  # another user's
    engine.publish("course-5", NOTE, {"n": 3})
    engine.publish("user-1", NOTE, {"n": 4})
    engine.publish("course-5", NOTE, {"n": 5})
    _, everything = open_stream(engine, "user-1", "course-5", last_event_id=0)
    next(everything)
    kept = [next_fields(everything) for _ in range(4)]
    assert [event["data"]["n"] for event in kept] == [1, 3, 4, 5]
    assert next(everything) == HEARTBEAT

    for resume in ({"last_event_id": kept[1]["id"]}, {"query": f"?last_event_id={kept[1]['id']}"}):
        _, frames = open_stream(engine, "user-1", "course-5", **resume)
        next(frames)
        assert [next_fields(frames)["data"]["n"] for _ in range(2)] == [4, 5]
        assert next(frames) == HEARTBEAT


def test_the_header_wins_over_the_query_and_an_id_that_is_no_whole_number_resumes_nothing(make_engine):
    engine = make_engine(heartbeat_s=0.2)
    for n in range(3):
        engine.publish("user-1", NOTE, {"n": n})
    _, frames = open_stream(engine, "user-1", last_event_id=0)
    next(frames)
    ids = [next_fields(frames)["id"] for _ in range(3)]

    _, frames = open_stream(engine, "user-1", last_event_id=ids[1], query=f"?last_event_id={ids[0]}")
    next(frames)
    assert next_fields(frames)["data"]["n"] == 2
    for nonsense in ("-1", "1e3", "abc", "٣"):  # the last: a digit, not ASCII
        _, frames = open_stream(engine, "user-1", last_event_id=nonsense)
        assert (next(frames), next(frames)) == (RETRY, HEARTBEAT)


def test_a_channel_keeps_its_last_1000_events(make_engine):
    engine = make_engine(heartbeat_s=0.2)
    for n in range(MAX_KEPT_PER_CHANNEL + 5):
        engine.publish("user-1", NOTE, {"n": n})

    _, frames = open_stream(engine, "user-1", last_event_id=0)
    next(frames)
    resent = [next_fields(frames)["data"]["n"] for _ in range(MAX_KEPT_PER_CHANNEL)]

    assert resent == list(range(5, MAX_KEPT_PER_CHANNEL + 5))
    assert next(frames) == HEARTBEAT


def test_events_past_the_buffer_time_are_not_resumed_and_idle_channels_are_dropped():
    clock = FakeClock()
    events = LocalEvents(300, clock)
    old = events.add("user-1", "t", "{}")
    events.add("user-2", "t", "{}")
    clock.advance(200)
    newer = events.add("user-1", "t", "{}")

    assert [event.id for event in events.since(["user-1"], 0)] == [old.id, newer.id]
    clock.advance(101)
    assert [event.id for event in events.since(["user-1", "user-2"], 0)] == [newer.id]
    events.add("user-3", "t", "{}")  # a sweep of every channel, due once the buffer time has passed
    assert sorted(events._kept) == ["user-1", "user-3"]
    assert [event.id for event in events._kept["user-1"]] == [newer.id]


def test_past_the_cap_a_stream_is_refused_with_retry_after_until_one_ends(make_engine):
    engine = make_engine(max_streams=2)
    first, frames = open_stream(engine, "user-1")
    unread = open_stream(engine, "user-2")  # never read: its slot is taken all the same

    with pytest.raises(ApiError) as refused:
        open_stream(engine, "user-3")

    assert refused.value.code == ErrorCode.EVENTS_FULL
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "10"}
    assert refused.value.details == {"max_streams": 2}
    assert engine.open_streams() == 2
    next(frames)
    first.app_iter.close()  # waitress, once a write failed because the client went away
    assert engine.open_streams() == 1
    third = open_stream(engine, "user-3")
    assert engine.open_streams() == 2
    del unread, third


def test_a_stream_ended_before_its_first_frame_or_dropped_unread_gives_its_slot_back(make_engine):
    engine = make_engine(max_streams=2)
    unread, _ = open_stream(engine, "user-1")
    unread.app_iter.close()
    assert engine.open_streams() == 0

    dropped, frames = open_stream(engine, "user-1")
    del dropped, frames
    gc.collect()

    assert engine.open_streams() == 0


def test_the_frames_end_gives_the_slot_back_when_the_client_goes_away_mid_stream(make_engine):
    engine = make_engine()
    response, frames = open_stream(engine, "user-1")
    next(frames)
    engine.publish("user-1", NOTE, {})
    next(frames)

    frames.close()  # what closing the body does: GeneratorExit where the frames were

    assert engine.open_streams() == 0
    response.app_iter.close()
    assert engine.open_streams() == 0


def test_an_idle_stream_sends_a_heartbeat_every_heartbeat_s_and_an_event_puts_the_next_one_off(make_engine):
    engine = make_engine(heartbeat_s=0.3)
    _, frames = open_stream(engine, "user-1")
    next(frames)

    started = time.monotonic()
    assert next(frames) == HEARTBEAT
    assert next(frames) == HEARTBEAT
    two_beats = time.monotonic() - started
    threading.Timer(0.15, engine.publish, ("user-1", NOTE, {})).start()
    assert next_fields(frames)["event"] == "notification"
    after_event = time.monotonic()
    assert next(frames) == HEARTBEAT
    beat_after_event = time.monotonic() - after_event

    assert 0.55 <= two_beats < 3
    assert 0.25 <= beat_after_event < 2


def test_close_ends_every_stream_at_once_and_refuses_new_ones(make_engine):
    engine = make_engine(heartbeat_s=30)
    streams = [open_stream(engine, f"user-{n}")[1] for n in range(3)]
    for frames in streams:
        next(frames)
    ended = []

    def read_to_the_end(frames):
        ended.append(list(frames))

    readers = [threading.Thread(target=read_to_the_end, args=(frames,)) for frames in streams]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    engine.close()
    for reader in readers:
        reader.join(5)

    assert ended == [[], [], []]
    assert time.monotonic() - started < 2  # not a heartbeat later
    assert engine.open_streams() == 0
    with pytest.raises(ApiError) as refused:
        open_stream(engine, "user-1")
    assert refused.value.code == ErrorCode.EVENTS_FULL


def test_a_stream_whose_client_falls_1000_events_behind_is_ended_to_resume_from_the_kept_events(make_engine):
    engine = make_engine()
    _, frames = open_stream(engine, "user-1")
    next(frames)
    with capture_logs() as logs:
        for n in range(engine_module.MAX_QUEUED_PER_STREAM + 1):
            engine.publish("user-1", NOTE, {"n": n})

    assert list(frames) == []
    assert engine.open_streams() == 0
    assert [log["event"] for log in logs] == ["events.stream_behind"]


def test_an_event_numbered_first_reaches_the_streams_first_whatever_thread_publishes_it(make_engine, monkeypatch):
    engine = make_engine(heartbeat_s=0.2)
    _, frames = open_stream(engine, "user-1")
    next(frames)
    numbered, go_on = threading.Event(), threading.Event()
    deliver = engine._deliver

    def held_for_the_job(event):
        if threading.current_thread().name == "job":  # numbered, then held before its streams get it
            numbered.set()
            go_on.wait(10)
        deliver(event)

    monkeypatch.setattr(engine, "_deliver", held_for_the_job)
    job = threading.Thread(target=engine.publish, args=("user-1", EventType.JOB_PROGRESS, {"by": "job"}), name="job")
    job.start()
    assert numbered.wait(10)
    webhook = threading.Thread(target=engine.publish, args=("user-1", NOTE, {"by": "webhook"}))
    webhook.start()
    webhook.join(0.2)  # time enough to overtake the job's event, were it let
    go_on.set()
    join([job, webhook])

    received = [next_fields(frames) for _ in range(2)]
    assert [event["data"]["by"] for event in received] == ["job", "webhook"]
    assert received[0]["id"] < received[1]["id"]


def test_publishing_counts_what_was_sent_and_never_raises(make_engine):
    metrics = Metrics()
    engine = make_engine(metrics=metrics)

    sent = engine.publish("user-1", NOTE, {"unread": 1})
    with capture_logs() as logs:
        failed = engine.publish("user-1", NOTE, {"unread": object()})  # no JSON for it

    assert (sent, failed) == (True, False)
    assert metrics.count("notification", "sent") == 1
    assert metrics.count("notification", "failed") == 1
    assert [log["event"] for log in logs] == ["events.publish_failed"]


def test_readiness_says_the_engine_and_its_streams(make_engine):
    engine = make_engine(max_streams=3)
    stream = open_stream(engine, "user-1")  # held open

    assert engine.readiness() == {"engine": "embedded", "streams": 1, "max_streams": 3}
    del stream


def test_from_settings_takes_the_cap_heartbeat_and_buffer_time():
    settings = load_settings(
        {"lms_api.environment": "development"},
        {"EVENTS_MAX_STREAMS": "3", "EVENTS_HEARTBEAT_S": "7", "EVENTS_BUFFER_S": "60"},
    )
    engine = EmbeddedEvents.from_settings(settings)

    assert (engine.max_streams, engine._heartbeat_s, engine._keep_s, engine._link) == (3, 7, 60, None)


# -- replicas sharing one Redis ------------------------------------------------------------------------------------


def replica(make_engine, url, **options):
    return make_engine(link=RedisLink(redis_client(url), "events", "this process only"), **options)


def past_the_kept_events(*streams):
    """Read each new stream up to its first heartbeat: what comes later comes through the fan-out (or a replay), not
    with the kept events a stream reads first."""
    for frames in streams:
        assert next(frames) == RETRY
        assert next(frames) == HEARTBEAT


def subscribed(*engines):
    for engine in engines:
        eventually(lambda engine=engine: engine.readiness()["fanout"] == "subscribed", "the listener subscribed", 10)


def test_a_replica_listens_to_the_others_from_its_first_stream_on(make_engine, empty_redis):
    engine = replica(make_engine, empty_redis)
    assert engine.readiness() == {
        "engine": "embedded",
        "streams": 0,
        "max_streams": 4,
        "redis": "answers",
        "fanout": "not yet (no stream opened)",
    }

    stream = open_stream(engine, "user-1")

    assert engine.readiness()["fanout"] == "subscribed"  # before the stream is answered: it misses nothing
    del stream


def test_an_event_published_on_one_replica_reaches_the_streams_of_every_replica_once(make_engine, empty_redis):
    a, b = (replica(make_engine, empty_redis, heartbeat_s=0.5) for _ in range(2))
    _, on_a = open_stream(a, "user-1")
    _, on_b = open_stream(b, "user-1")
    next(on_a), next(on_b)
    subscribed(a, b)

    a.publish("user-1", NOTE, {"unread": 1})
    b.publish("user-1", NOTE, {"unread": 2})

    from_a = [next_fields(on_a) for _ in range(2)]
    from_b = [next_fields(on_b) for _ in range(2)]
    assert [event["data"]["unread"] for event in from_a] == [1, 2]
    assert from_b == from_a  # the same events, ids and order (one sequence for every replica, its own included)
    assert from_a[0]["id"] < from_a[1]["id"]
    assert next(on_a) == next(on_b) == HEARTBEAT  # each event once, not again through the fan-out


def test_a_stream_resumed_on_another_replica_gets_the_events_kept_in_redis(make_engine, empty_redis):
    a, b = (replica(make_engine, empty_redis, heartbeat_s=0.3, keep_s=60) for _ in range(2))
    for n in range(3):
        a.publish("user-1", NOTE, {"n": n})
    _, on_a = open_stream(a, "user-1", last_event_id=0)
    next(on_a)
    first = next_fields(on_a)

    _, on_b = open_stream(b, "user-1", last_event_id=first["id"])
    next(on_b)
    subscribed(b)

    assert [next_fields(on_b)["data"]["n"] for _ in range(2)] == [1, 2]
    assert next(on_b) == HEARTBEAT


def test_redis_keeps_the_last_1000_events_of_a_channel_for_the_buffer_time(make_engine, empty_redis):
    engine = replica(make_engine, empty_redis, keep_s=60)
    for n in range(MAX_KEPT_PER_CHANNEL + 3):
        engine.publish("user-1", NOTE, {"n": n})

    store = redis_client(empty_redis)
    key = engine_module.KEPT_PREFIX + "user-1"
    assert store.zcard(key) == MAX_KEPT_PER_CHANNEL
    assert json.loads(store.zrange(key, 0, 0)[0])["data"] == event_data(NOTE, {"n": 3})
    assert 55 <= store.ttl(key) <= 60


def test_events_older_than_the_buffer_time_are_dropped_from_redis(make_engine, empty_redis):
    clock = FakeClock()
    clock.now = time.time()
    engine = replica(make_engine, empty_redis, keep_s=60, clock=clock, heartbeat_s=0.2)
    engine.publish("user-1", NOTE, {"n": 0})
    clock.advance(30)
    engine.publish("user-1", NOTE, {"n": 1})
    clock.advance(31)  # the first is 61 s old

    _, frames = open_stream(engine, "user-1", last_event_id=0)
    next(frames)
    assert next_fields(frames)["data"]["n"] == 1  # the first, still stored, is not resumed
    assert next(frames) == HEARTBEAT
    engine.publish("user-1", NOTE, {"n": 2})  # which drops it from the stored events
    assert redis_client(empty_redis).zcard(engine_module.KEPT_PREFIX + "user-1") == 2


def test_while_redis_is_away_events_reach_this_process_only_without_ids_and_fan_out_again_once_it_is_back(
    make_engine, own_redis, monkeypatch
):
    monkeypatch.setattr(redisstate, "RETRY_AFTER_S", 0.2)  # Redis is asked again soon, not 5 s later
    monkeypatch.setattr(engine_module, "RETRY_AFTER_S", 0.2)
    process, url = own_redis
    metrics = Metrics()
    a = replica(make_engine, url, heartbeat_s=0.5, metrics=metrics)
    b = replica(make_engine, url, heartbeat_s=0.5)
    _, on_a = open_stream(a, "user-1")
    _, on_b = open_stream(b, "user-1")
    next(on_a), next(on_b)
    subscribed(a, b)

    with capture_logs() as logs:
        process.terminate()
        process.wait(10)
        taken = a.publish("user-1", NOTE, {"n": 1})
        time.sleep(0.5)  # the listeners try again meanwhile
        a.publish("user-1", NOTE, {"n": 2})
        readiness = a.readiness()

    assert taken is False  # the other replicas' streams never hear it: the webhook has Moodle send it again

    assert [(event.get("id"), event["data"]["n"]) for event in (next_fields(on_a), next_fields(on_a))] == [
        (None, 1),
        (None, 2),
    ]
    assert next(on_b) == HEARTBEAT
    assert metrics.count("notification", "failed") == 2
    assert [log["event"] for log in logs].count("events.redis_unavailable") == 2  # once in each process
    assert readiness["redis"] == "unreachable (events reach this process's streams only)"

    restarted, _ = start_redis_server(int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        subscribed(a, b)
        eventually(lambda: a._link.usable, "Redis asked again")
        a.publish("user-1", NOTE, {"n": 3})
        back_on_a, back_on_b = next_fields(on_a), next_fields(on_b)
        while back_on_a == HEARTBEAT:
            back_on_a = next_fields(on_a)
        while back_on_b == HEARTBEAT:
            back_on_b = next_fields(on_b)
        assert back_on_a == back_on_b
        assert (back_on_a["data"]["n"], isinstance(back_on_a["id"], int)) == (3, True)
        assert metrics.count("notification", "sent") == 1
    finally:
        restarted.terminate()
        restarted.wait(10)


@pytest.mark.parametrize(
    "message",
    [
        b"not json",
        b"[1]",
        b"null",
        b'{"id": 1}',
        b'{"id":1,"channel":["user-1"],"type":"notification","data":"{}","at":0}',
        b'{"id":1,"channel":"user-1","type":"notification","data":5,"at":0}',
        b"[" * 100_000,
    ],
    ids=["not-json", "array", "null", "no-fields", "channel-not-a-string", "data-not-a-string", "nested-too-deep"],
)
def test_a_fanout_message_that_is_no_event_is_logged_and_skipped_and_the_listener_goes_on(
    make_engine, empty_redis, message
):
    engine = replica(make_engine, empty_redis, heartbeat_s=0.5)
    other = replica(make_engine, empty_redis)
    _, frames = open_stream(engine, "user-1")
    past_the_kept_events(frames)
    subscribed(engine)

    with capture_logs() as logs:
        redis_client(empty_redis).publish(engine_module.FANOUT_CHANNEL, message)
        eventually(lambda: logs, "the message read")
        other.publish("user-1", NOTE, {"n": 1})
        received = next_event(frames)

    assert received["data"] == {"type": "notification", "n": 1}
    assert [log["event"] for log in logs] == ["events.fanout_unreadable"]
    assert next(frames) == HEARTBEAT


def test_a_kept_entry_that_is_no_event_is_logged_and_skipped_by_a_resuming_stream(make_engine, empty_redis):
    engine = replica(make_engine, empty_redis, heartbeat_s=0.3)
    engine.publish("user-1", NOTE, {"n": 1})
    redis_client(empty_redis).zadd(engine_module.KEPT_PREFIX + "user-1", {b"[1]": 1})

    with capture_logs() as logs:
        _, frames = open_stream(engine, "user-1", last_event_id=0)
        next(frames)
        assert next_fields(frames)["data"]["n"] == 1
        assert next(frames) == HEARTBEAT

    assert [log["event"] for log in logs] == ["events.kept_unreadable"]


def test_the_listener_outlives_a_failure_of_its_own_and_hands_on_the_event_it_failed_at(
    make_engine, empty_redis, monkeypatch
):
    monkeypatch.setattr(engine_module, "RETRY_AFTER_S", 0.1)
    engine = replica(make_engine, empty_redis, heartbeat_s=0.5)
    other = replica(make_engine, empty_redis)
    _, frames = open_stream(engine, "user-1")
    past_the_kept_events(frames)
    subscribed(engine)
    receive, failed = engine._receive, []

    def fails_once(message):
        if not failed:
            failed.append(message)
            raise RuntimeError("a bug")
        receive(message)

    monkeypatch.setattr(engine, "_receive", fails_once)
    with capture_logs() as logs:
        other.publish("user-1", NOTE, {"n": 1})
        first = next_event(frames)
        other.publish("user-1", NOTE, {"n": 2})
        second = next_event(frames)

    assert (first["data"]["n"], second["data"]["n"]) == (1, 2)
    assert [log["event"] for log in logs] == ["events.listener_failed"]
    assert engine._listener.is_alive()


def test_events_published_while_the_fanout_was_lost_reach_the_open_streams_once_it_is_back(
    make_engine, own_redis, monkeypatch
):
    monkeypatch.setattr(engine_module, "RETRY_AFTER_S", 1.0)  # the others publish meanwhile
    _, url = own_redis
    a = replica(make_engine, url, heartbeat_s=0.3)
    b = replica(make_engine, url)  # publishes only (a webhook, a job): no stream, no listener
    _, fresh = open_stream(a, "user-1")
    _, going = open_stream(a, "user-1", "course-2")
    past_the_kept_events(fresh, going)
    subscribed(a)
    b.publish("course-2", NOTE, {"n": 0})
    assert next_event(going)["data"]["n"] == 0

    with capture_logs() as logs:
        redis_client(url).client_kill_filter(_type="pubsub")  # Redis dropped the connection; the rest works on
        eventually(lambda: a.readiness()["fanout"] == "subscribing", "the listener lost the fan-out")
        b.publish("user-1", NOTE, {"n": 1})
        b.publish("course-2", NOTE, {"n": 2})
        subscribed(a)
    b.publish("user-1", NOTE, {"n": 3})

    assert [next_event(fresh)["data"]["n"] for _ in range(2)] == [1, 3]
    assert [next_event(going)["data"]["n"] for _ in range(3)] == [1, 2, 3]
    assert next(fresh) == next(going) == HEARTBEAT  # none twice
    assert [log["event"] for log in logs] == ["events.redis_unavailable", "events.redis_restored"]


class SilencingProxy:
    """A TCP proxy to a local ``port`` that can stop passing bytes on while every connection stays open: a peer gone
    silent behind a network partition, which sends no FIN and no RST."""

    def __init__(self, port):
        self.silent = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._connections = []
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, args=(port,), daemon=True).start()

    def _accept(self, port):
        with suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                self._connections += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pass_on, args=(source, sink), daemon=True).start()

    def _pass_on(self, source, sink):
        with suppress(OSError):
            while data := source.recv(65536):
                while self.silent.is_set():
                    time.sleep(0.01)
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self):
        self._server.close()
        for connection in self._connections:
            connection.close()


def quick_health_checks(monkeypatch):
    monkeypatch.setattr(engine_module, "HEALTH_CHECK_S", 0.2)
    monkeypatch.setattr(engine_module, "LISTEN_POLL_S", 0.02)
    monkeypatch.setattr(engine_module, "RETRY_AFTER_S", 0.2)


def test_a_fanout_connection_gone_silent_is_noticed_and_the_events_published_meanwhile_follow(
    make_engine, empty_redis, monkeypatch
):
    quick_health_checks(monkeypatch)
    proxy = SilencingProxy(int(empty_redis.rsplit(":", 1)[1].split("/")[0]))
    a = replica(make_engine, f"redis://127.0.0.1:{proxy.port}/0", heartbeat_s=0.3)
    b = replica(make_engine, empty_redis)
    _, frames = open_stream(a, "user-1")
    past_the_kept_events(frames)
    subscribed(a)

    try:
        proxy.silent.set()
        b.publish("user-1", NOTE, {"n": 1})  # held in the silent connection
        eventually(lambda: not a._subscribed.is_set(), "the silent connection noticed")
        proxy.silent.clear()
        subscribed(a)
        b.publish("user-1", NOTE, {"n": 2})

        assert [next_event(frames)["data"]["n"] for _ in range(2)] == [1, 2]
        assert next(frames) == HEARTBEAT
    finally:
        proxy.close()


def test_a_quiet_fanout_is_pinged_and_kept(make_engine, empty_redis, monkeypatch):
    quick_health_checks(monkeypatch)
    engine = replica(make_engine, empty_redis)
    stream = open_stream(engine, "user-1")
    subscribed(engine)
    store = redis_client(empty_redis)

    with capture_logs() as logs:
        store.config_resetstat()
        time.sleep(1.2)  # six health-check periods without an event
        pings = store.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)

    assert pings >= 3
    assert engine.readiness()["fanout"] == "subscribed"
    assert logs == []
    del stream


def test_events_published_at_once_on_two_replicas_reach_every_stream_once_in_id_order(make_engine, empty_redis):
    a, b = (replica(make_engine, empty_redis, heartbeat_s=0.3) for _ in range(2))
    _, on_a = open_stream(a, "user-1")
    _, on_b = open_stream(b, "user-1")
    past_the_kept_events(on_a, on_b)
    subscribed(a, b)
    each = 25

    def publish(engine):
        for n in range(each):
            engine.publish("user-1", NOTE, {"n": n})

    publishers = [threading.Thread(target=publish, args=(engine,)) for engine in (a, a, b, b)]
    for publisher in publishers:
        publisher.start()
    join(publishers)

    on_a_ids = [next_event(on_a)["id"] for _ in range(4 * each)]
    on_b_ids = [next_event(on_b)["id"] for _ in range(4 * each)]
    assert on_a_ids == sorted(set(on_a_ids))  # each once, in id order
    assert on_b_ids == on_a_ids


def test_close_stops_the_listener(make_engine, empty_redis):
    engine = replica(make_engine, empty_redis)
    stream = open_stream(engine, "user-1")
    subscribed(engine)

    engine.close()
    del stream

    assert not engine._listener.is_alive()
    assert engine.readiness()["fanout"] == "subscribing"
