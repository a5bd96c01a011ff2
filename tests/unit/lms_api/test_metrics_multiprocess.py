"""The metrics of several processes sharing PROMETHEUS_MULTIPROC_DIR, as gunicorn's workers do: each counts in files
of its own, and a scrape answered by any of them, or by a process that counted nothing, tells the sums. Real
processes (forked from this one, whose prometheus_client already chose to keep values in memory, as a gunicorn master's
has); this process never sets the directory, so the apps the other tests build keep their own registries."""

import multiprocessing
import os

import pytest
from prometheus_client import generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from lms_api.calllog import CallLog, CallRecord
from lms_api.metrics import MULTIPROCESS_DIRECTORY, GatewayMetrics, empty_directory, forget_process
from lms_api.moodle.guard import Bulkhead, BulkheadFull

FORK = multiprocessing.get_context("fork")
COURSES = ("api.moodle.courses", "GET", "200")


def in_a_process(work, directory, *args):
    """``work(metrics, *args)`` in a forked process whose app counts in ``directory``: what it answered, and its pid."""
    answers = FORK.SimpleQueue()

    def run():
        os.environ[MULTIPROCESS_DIRECTORY] = str(directory)
        kept_in_memory = not values.ValueClass._multiprocess
        answers.put((kept_in_memory, work(GatewayMetrics(), *args)))

    process = FORK.Process(target=run)
    process.start()
    process.join(30)
    assert process.exitcode == 0, "the process failed (its traceback is in the captured stderr)"
    kept_in_memory, answer = answers.get()
    assert kept_in_memory, "prometheus_client of the process was not left as this one chose, as a worker's is"
    return answer, process.pid


def count_requests(metrics, requests, seconds, calls):
    for _ in range(requests):
        metrics.requests.labels(*COURSES).inc()
        metrics.request_seconds.labels(*COURSES[:2]).observe(seconds)
    metrics.observe_calls(CallLog(calls=calls))


def refuse(metrics, times):
    bulkhead = Bulkhead(1, 0.0)
    with bulkhead.slot(1.0):
        for _ in range(times):
            with pytest.raises(BulkheadFull), bulkhead.slot(1.0):
                pass
    metrics.refusals.catch_up(bulkhead)
    metrics.refusals.catch_up(bulkhead)  # nothing refused since: nothing added
    swapped = Bulkhead(1, 0.0)
    swapped.refused = 1  # a client swapped in, which had refused once already
    metrics.refusals.catch_up(swapped)


def scrape(metrics):
    maker = values.ValueClass
    GatewayMetrics()  # a second app in the process: the same files, not a second writer of them
    assert values.ValueClass is maker
    return generate_latest(metrics.registry).decode()


def samples(text):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def call(function, outcome, ms, attempts=1):
    return CallRecord(function, writes=False, ms=ms, attempts=attempts, outcome=outcome)


def test_what_two_processes_counted_is_summed_by_a_scrape_answered_by_a_third(tmp_path):
    _, first = in_a_process(count_requests, tmp_path, 3, 0.002, [call("core_course_get_courses", "ok", 20)])
    _, second = in_a_process(
        count_requests,
        tmp_path,
        4,
        0.2,
        [call("core_course_get_courses", "ok", 30, attempts=3), call("core_course_get_courses", "moodlebusy", 5)],
    )

    scraped, _ = in_a_process(scrape, tmp_path)

    found = samples(scraped)
    courses = (("method", "GET"), ("route", "api.moodle.courses"))
    assert found[("lms_api_requests_total", (*courses, ("status", "200")))] == 7
    assert found[("lms_api_request_duration_seconds_count", courses)] == 7
    assert found[("lms_api_request_duration_seconds_bucket", (("le", "0.0025"), *courses))] == 3
    assert found[("lms_api_request_duration_seconds_bucket", (("le", "0.25"), *courses))] == 7
    assert found[("lms_api_request_duration_seconds_sum", courses)] == pytest.approx(3 * 0.002 + 4 * 0.2)
    ok = (("function", "core_course_get_courses"), ("outcome", "ok"))
    assert found[("lms_api_moodle_calls_total", ok)] == 2
    assert found[("lms_api_moodle_calls_total", (ok[0], ("outcome", "moodlebusy")))] == 1
    assert found[("lms_api_moodle_retries_total", (ok[0],))] == 2
    assert found[("lms_api_moodle_call_duration_seconds_sum", (ok[0],))] == pytest.approx(0.055)
    assert {first, second}.isdisjoint({os.getpid()})


def test_the_counts_of_processes_gone_and_forgotten_stay_in_the_sums(tmp_path):
    _, first = in_a_process(count_requests, tmp_path, 2, 0.01, [])
    _, second = in_a_process(count_requests, tmp_path, 5, 0.01, [])
    forget_process(first, str(tmp_path))
    forget_process(second, str(tmp_path))

    found = samples(in_a_process(scrape, tmp_path)[0])

    assert (
        found[("lms_api_requests_total", (("method", "GET"), ("route", "api.moodle.courses"), ("status", "200")))] == 7
    )


def test_the_bulkheads_refusals_of_each_process_are_summed_once_each(tmp_path):
    in_a_process(refuse, tmp_path, 2)
    in_a_process(refuse, tmp_path, 3)

    found = samples(in_a_process(scrape, tmp_path)[0])

    assert found[("lms_api_moodle_bulkhead_refusals_total", ())] == (2 + 1) + (3 + 1)


def test_a_scrape_of_a_directory_emptied_tells_nothing_of_its_previous_run(tmp_path):
    in_a_process(count_requests, tmp_path, 4, 0.01, [])
    (tmp_path / "notes.txt").write_text("the operator's")

    empty_directory(str(tmp_path))

    found = samples(in_a_process(scrape, tmp_path)[0])
    assert not [name for name, _ in found if name.startswith("lms_api_requests")]
    assert found[("lms_api_moodle_bulkhead_refusals_total", ())] == 0  # of the scraping process, which refused none
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".db")) == ["notes.txt"]


def test_a_process_forgotten_leaves_only_its_live_gauges_files(tmp_path):
    names = [
        "gauge_livesum_101.db",
        "gauge_liveall_101.db",
        "gauge_sum_101.db",
        "counter_101.db",
        "gauge_livesum_1011.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")

    forget_process(101, str(tmp_path))

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "counter_101.db",
        "gauge_livesum_1011.db",
        "gauge_sum_101.db",
    ]


def test_without_the_directory_an_app_counts_in_its_own_registry_in_memory(monkeypatch):
    monkeypatch.delenv(MULTIPROCESS_DIRECTORY, raising=False)
    metrics, other = GatewayMetrics(), GatewayMetrics()

    metrics.requests.labels(*COURSES).inc()

    assert metrics.refusals is None
    assert not values.ValueClass._multiprocess
    text = generate_latest(metrics.registry).decode()
    assert 'lms_api_requests_total{method="GET",route="api.moodle.courses",status="200"} 1.0' in text
    assert "lms_api_requests_total{" not in generate_latest(other.registry).decode()
