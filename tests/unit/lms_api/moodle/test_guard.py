"""The bulkhead and the circuit breaker on their own, and inside MoodleClient against a mocked Moodle."""

import threading

import pytest
import structlog
from structlog.testing import capture_logs

from lms_api.moodle import guard
from lms_api.moodle.guard import BreakerOpen, BreakerState, Bulkhead, BulkheadFull, CircuitBreaker
from tests.support.timing import FakeClock
from tests.unit.mocked_moodle import READ_FN, SITE_INFO, WRITE_FN, add, prime, raised, refused, sent_functions

# -- the breaker -----------------------------------------------------------------------------------


def test_the_breaker_opens_after_the_set_number_of_failures_in_a_row():
    breaker = CircuitBreaker(3, 10, FakeClock())
    for _ in range(2):
        breaker.admit()
        breaker.failed()
    breaker.admit()
    breaker.succeeded()  # a success in between starts the count again
    for _ in range(2):
        breaker.admit()
        breaker.failed()

    assert breaker.state == BreakerState.CLOSED
    breaker.admit()
    breaker.failed()
    assert breaker.state == BreakerState.OPEN


def test_an_open_breaker_refuses_with_the_seconds_left():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.failed()
    clock.advance(3.5)

    with pytest.raises(BreakerOpen) as refusal:
        breaker.admit()

    assert refusal.value.retry_after_s == 7


def test_after_the_cooldown_one_trial_goes_through_and_success_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.failed()
    clock.advance(10)

    breaker.admit()  # the trial
    assert breaker.state == BreakerState.HALF_OPEN
    with pytest.raises(BreakerOpen):
        breaker.admit()  # nobody else while the trial runs
    breaker.succeeded()

    assert breaker.state == BreakerState.CLOSED
    breaker.admit()


def test_a_failed_trial_opens_the_breaker_for_another_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.failed()
    clock.advance(10)
    breaker.admit()

    breaker.failed()

    assert breaker.state == BreakerState.OPEN
    assert breaker.retry_after_s() == 10


def test_an_abandoned_trial_lets_the_next_caller_be_the_trial():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.failed()
    clock.advance(10)
    breaker.admit()

    breaker.abandoned()

    breaker.admit()
    assert breaker.state == BreakerState.HALF_OPEN


def test_each_change_of_state_is_logged_once(monkeypatch):
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10, clock)
    with capture_logs() as logs:
        # A logger made inside the capture: the module's own may be bound already to whatever configuration came first.
        monkeypatch.setattr(guard, "log", structlog.get_logger("lms_api.moodle"))
        for _ in range(4):
            breaker.failed()
        clock.advance(10)
        breaker.admit()
        breaker.succeeded()
        breaker.succeeded()

    assert [line["event"] for line in logs] == [
        "moodle.breaker_opened",
        "moodle.breaker_half_open",
        "moodle.breaker_closed",
    ]


# -- the bulkhead ----------------------------------------------------------------------------------


def test_the_bulkhead_refuses_past_its_limit_after_the_queue_timeout():
    bulkhead = Bulkhead(2, 0.01)
    with bulkhead.slot(1.0), bulkhead.slot(1.0):
        assert bulkhead.in_use == 2
        with pytest.raises(BulkheadFull), bulkhead.slot(1.0):
            pass
    assert (bulkhead.in_use, bulkhead.refused) == (0, 1)
    with bulkhead.slot(1.0):
        assert bulkhead.in_use == 1


def test_a_waiting_call_gets_the_slot_a_finished_call_frees():
    bulkhead = Bulkhead(1, 5.0)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with bulkhead.slot(5.0):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    threading.Timer(0.05, release.set).start()

    with bulkhead.slot(5.0):
        assert bulkhead.in_use == 1
    thread.join(5)
    assert bulkhead.refused == 0


def test_the_wait_never_outlasts_the_calls_own_deadline():
    bulkhead = Bulkhead(1, 60.0)
    with bulkhead.slot(1.0), pytest.raises(BulkheadFull), bulkhead.slot(0.01):
        pass


# -- inside the client -----------------------------------------------------------------------------


@pytest.fixture
def guarded(make_client, clock):
    """A client whose breaker opens after 3 failures for 10 s, and which makes one attempt per call."""
    return make_client(max_retries=0, breaker=CircuitBreaker(3, 10, clock))


def test_transport_failures_open_the_breaker_and_then_nothing_is_sent(guarded, rsps):
    prime(guarded, rsps)
    add(rsps, READ_FN, body=refused())
    for _ in range(3):
        assert raised(guarded.call, READ_FN).code == "moodleunavailable"

    error = raised(guarded.call, READ_FN)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.details == {"function": READ_FN, "breaker": "open"}
    assert error.headers == {"Retry-After": "10"}
    assert sent_functions(rsps).count(READ_FN) == 3


@pytest.mark.parametrize("status", [502, 503, 504])
def test_http_502_503_and_504_count_as_failures(guarded, rsps, status):
    prime(guarded, rsps)
    add(rsps, READ_FN, status=status, body="<html>gateway</html>")
    for _ in range(3):
        raised(guarded.call, READ_FN)

    assert guarded.breaker.state == BreakerState.OPEN


def test_moodles_own_error_answers_do_not_count(guarded, rsps):
    prime(guarded, rsps)
    add(rsps, READ_FN, json={"exception": "invalid_parameter_exception", "errorcode": "invalidparameter",
                             "message": "Invalid parameter value detected"})  # fmt: skip
    for _ in range(5):
        assert raised(guarded.call, READ_FN).code == "invalidparameter"

    assert guarded.breaker.state == BreakerState.CLOSED


def test_after_the_cooldown_a_successful_trial_closes_the_breaker(guarded, rsps, clock):
    prime(guarded, rsps)
    add(rsps, READ_FN, body=refused())
    for _ in range(3):
        raised(guarded.call, READ_FN)
    rsps.replace(rsps.POST, rsps.calls[-1].request.url, json=[])  # Moodle is back
    clock.advance(10)

    assert guarded.call(READ_FN) == []
    assert guarded.breaker.state == BreakerState.CLOSED


def test_a_trial_that_ends_in_neither_an_answer_nor_a_transport_failure_leaves_the_next_caller_a_trial(
    guarded, rsps, clock
):
    prime(guarded, rsps)
    add(rsps, READ_FN, body=refused())
    for _ in range(3):
        raised(guarded.call, READ_FN)
    clock.advance(10)
    rsps.replace(rsps.POST, rsps.calls[-1].request.url, body=OSError("the upload's spooled file is unreadable"))

    with pytest.raises(OSError):
        guarded.call(READ_FN)  # the trial
    rsps.replace(rsps.POST, rsps.calls[-1].request.url, json=[])

    assert guarded.call(READ_FN) == []  # let through as the next trial, not refused as open
    assert guarded.breaker.state == BreakerState.CLOSED


def test_a_call_that_finds_no_slot_is_a_503_moodlebusy_and_is_not_sent(make_client, rsps):
    client = make_client(bulkhead=Bulkhead(1, 0.0))
    prime(client, rsps)

    with client.bulkhead.slot(1.0):  # another thread's call holds the only slot
        error = raised(client.call, WRITE_FN, {"courses": [{"fullname": "X"}]})

    assert (error.status, error.code) == (503, "moodlebusy")
    assert error.headers == {"Retry-After": "1"}
    assert "nothing was sent" in error.message
    assert sent_functions(rsps) == [SITE_INFO]


def test_past_its_cooldown_an_open_breaker_reads_half_open_before_any_call():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10, clock)
    breaker.failed()

    assert breaker.state == BreakerState.OPEN
    clock.advance(10)
    assert breaker.state == BreakerState.HALF_OPEN  # readiness can say so: the next call is the trial
