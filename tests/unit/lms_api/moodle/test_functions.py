"""The table of Moodle functions: every member is called by the gateway, every write says what it drops."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lms_api
from lms_api.moodle import functions
from lms_api.moodle.functions import AnswerShape, CacheGroup, MoodleFunction, read, write

PACKAGE = Path(lms_api.__file__).parent
TABLE = Path(functions.__file__)


def members_used_outside_the_table() -> set[str]:
    sources = (path.read_text() for path in PACKAGE.rglob("*.py") if path != TABLE)
    return {name for source in sources for name in re.findall(r"\bMoodleFunction\.([A-Z_]+)\b", source)}


def test_every_member_is_used_by_the_gateway():
    unused = {function.name for function in MoodleFunction} - members_used_outside_the_table()

    assert not unused, f"no code in lms_api calls {sorted(unused)}: remove them from the table"


def test_a_member_nothing_uses_would_be_found(monkeypatch):
    monkeypatch.setattr(Path, "read_text", lambda self, *args, **kwargs: "MoodleFunction.SITE_INFO")

    assert members_used_outside_the_table() == {"SITE_INFO"}


def test_a_write_that_drops_no_group_without_saying_why_is_refused():
    with pytest.raises(ValueError, match="drops the cache groups it may change, or says why"):
        write(AnswerShape.OBJECT)

    assert write(AnswerShape.OBJECT, drops=(CacheGroup.COURSES,)).drops == (CacheGroup.COURSES,)
    assert write(AnswerShape.NULL, drops_nothing_because="nothing cached lists it").drops == ()


def test_every_write_in_the_table_drops_a_group_or_says_why_and_no_read_drops_any():
    for function in MoodleFunction:
        if function.writes:
            assert function.drops or function.behaviour.drops_nothing_because, function
            assert function.cache_group is None and not function.retried, function
        else:
            assert not function.drops and not function.behaviour.drops_nothing_because, function
            assert function.retried, function


def test_a_shared_or_partitioned_read_names_its_cache_group():
    with pytest.raises(ValueError, match="such a read names its cache group"):
        read(AnswerShape.OBJECT, shared=True)
    with pytest.raises(ValueError, match="such a read names its cache group"):
        read(AnswerShape.OBJECT, partition_by="useridto")

    assert read(AnswerShape.OBJECT, cached=CacheGroup.SITE_INFO, shared=True).shared
    assert not read(AnswerShape.OBJECT, cached=CacheGroup.SITE_INFO).shared


def test_only_the_site_info_is_shared_by_every_caller():
    """A shared read's answers are kept parsed in every process: a read a caller can vary (its parameters, or whose
    answer depends on who asks) must never be one."""
    assert [function for function in MoodleFunction if function.shared] == [MoodleFunction.SITE_INFO]
