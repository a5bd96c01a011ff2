"""How a cached read was answered, as ``Cache-Status`` (RFC 9211) tells it, alone and for a request of several."""

import pytest

from lms_api.cache.outcomes import CacheOutcome, Fetch, request_outcome


@pytest.mark.parametrize(
    ("outcome", "header"),
    [
        (CacheOutcome(Fetch.HIT, 42), "lms_api; hit; ttl=42"),
        (CacheOutcome(Fetch.STALE, -30), "lms_api; hit; ttl=-30; detail=stale-if-error"),
        (CacheOutcome(Fetch.COLLAPSED), "lms_api; fwd=uri-miss; collapsed"),
        (CacheOutcome(Fetch.MISS, stored=True), "lms_api; fwd=uri-miss; stored"),
        (CacheOutcome(Fetch.MISS), "lms_api; fwd=uri-miss"),
        (CacheOutcome(Fetch.REFRESH, stored=True), "lms_api; fwd=request; stored"),
        (CacheOutcome(Fetch.REFRESH), "lms_api; fwd=request"),
    ],
)
def test_each_outcome_has_its_rfc_9211_member(outcome, header):
    assert outcome.header() == header


@pytest.mark.parametrize(
    ("outcomes", "header"),
    [
        ([CacheOutcome(Fetch.HIT, 50), CacheOutcome(Fetch.HIT, 20)], "lms_api; hit; ttl=20"),
        ([CacheOutcome(Fetch.HIT, 50), CacheOutcome(Fetch.MISS, stored=True)], "lms_api; fwd=uri-miss; stored"),
        ([CacheOutcome(Fetch.COLLAPSED), CacheOutcome(Fetch.HIT, 5)], "lms_api; fwd=uri-miss; collapsed"),
        ([CacheOutcome(Fetch.MISS, stored=True), CacheOutcome(Fetch.MISS)], "lms_api; fwd=uri-miss"),
        ([CacheOutcome(Fetch.HIT, 9), CacheOutcome(Fetch.REFRESH, stored=True)], "lms_api; fwd=request; stored"),
        (
            [CacheOutcome(Fetch.STALE, -5), CacheOutcome(Fetch.STALE, -40), CacheOutcome(Fetch.MISS, stored=True)],
            "lms_api; hit; ttl=-40; detail=stale-if-error",
        ),
    ],
)
def test_a_request_of_several_cached_calls_reports_its_least_cached_one(outcomes, header):
    outcome = request_outcome(outcomes)

    assert outcome is not None and outcome.header() == header


@pytest.mark.parametrize(
    ("outcome", "header"),
    [
        (CacheOutcome(Fetch.HIT, 42), "lms_api; hit; ttl=42; detail=no-cache-ignored"),
        # The others reached Moodle, or waited for a call that did, or Moodle failed: no-cache changed nothing there
        (CacheOutcome(Fetch.STALE, -30), "lms_api; hit; ttl=-30; detail=stale-if-error"),
        (CacheOutcome(Fetch.COLLAPSED), "lms_api; fwd=uri-miss; collapsed"),
        (CacheOutcome(Fetch.MISS, stored=True), "lms_api; fwd=uri-miss; stored"),
    ],
)
def test_a_hit_says_when_the_requests_no_cache_was_not_honoured(outcome, header):
    assert outcome.header(no_cache_ignored=True) == header


def test_a_request_without_cached_calls_has_no_outcome():
    assert request_outcome([]) is None
