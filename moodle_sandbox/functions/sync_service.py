"""``local_course_add_new_course_module_resource`` of the lectureStudio/moodle-local_sync_service plugin.

Every parameter is PARAM_TEXT and the plugin hands them to SQL unchecked, so text PostgreSQL cannot read as a
number fails in the database. The plugin runs without a transaction; the sandbox checks everything before it writes
anything, so a failed call leaves no half-made module behind.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import bigint_read_error, bigint_write_error, missing_record
from moodle_sandbox.params import DEFAULT, Single, Value
from moodle_sandbox.php import php_empty
from moodle_sandbox.records import CONTEXT_COURSE, CourseModule
from moodle_sandbox.registry import sandbox_function
from moodle_sandbox.seed import ADMIN_CONTEXT_ID

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

ADD_RESOURCE = Single(
    {
        "courseid": Value("text"),
        "sectionnum": Value("text"),
        "itemid": Value("text"),
        "displayname": Value("text"),
        "time": Value("text", DEFAULT, None),
        "visible": Value("text"),
        "beforemod": Value("text", DEFAULT, None),
    }
)
_BIGINT = re.compile(r"\s*[+-]?\d+\s*")  # what PostgreSQL accepts as a bigint literal


def _bigint(text: str) -> int | None:
    return int(text) if _BIGINT.fullmatch(text) else None


@sandbox_function("local_course_add_new_course_module_resource", ADD_RESOURCE)
def add_resource(site: SandboxSite, params: dict[str, Any]) -> dict[str, str]:
    """A resource in section ``sectionnum`` (created if missing) with the files of draft area ``itemid``.

    ``visible`` ``"false"`` hides it; with ``time`` it gets the plugin's date availability condition instead.
    """
    state = site.state
    courseid, sectionnum, itemid = params["courseid"], params["sectionnum"], params["itemid"]
    course_id = _bigint(courseid)
    if course_id is None:  # context_course::instance() reads the context table first
        sql = "SELECT * FROM {context} WHERE contextlevel = ? AND instanceid = ?"
        raise bigint_read_error(sql, [CONTEXT_COURSE, courseid], courseid)
    course = state.courses.get(course_id)
    if course is None:
        raise missing_record("course", "id,category", courseid, site.debug)
    section = _bigint(sectionnum)
    if section is None:  # add_course_module() inserts it as course_modules.section
        raise bigint_write_error("course_modules", sectionnum)
    draft_id = _bigint(itemid) if not php_empty(itemid) else 0
    if draft_id is None:  # resource_set_mainfile() reads the draft area
        sql = "SELECT * FROM {files} WHERE contextid = ? AND component = ? AND filearea = ? AND itemid = ?"
        raise bigint_read_error(sql, [ADMIN_CONTEXT_ID, "user", "draft", itemid], itemid)
    time, visible = params["time"], params["visible"]
    availability = None
    if time is not None:
        availability = '{"op":"&","c":[{"type":"date","d":">=","t":' + time + '}],"showc":[' + visible + "]}"
    cm = CourseModule(
        id=state.next_id("course_modules"),
        course=course.id,
        section=section,
        modname="resource",
        instance=state.next_id("resource"),
        name=params["displayname"],
        visible=0 if time is None and visible == "false" else 1,
        availability=availability,
        draftitemid=draft_id,
        files=[dataclasses.replace(draft) for draft in state.drafts.get(draft_id, [])],
        added=site.now(),
    )
    state.course_modules[cm.id] = cm
    sequence = course.sections.setdefault(section, [])
    before = _bigint(params["beforemod"] or "")
    sequence.insert(sequence.index(before) if before in sequence else len(sequence), cm.id)
    return {"message": "Successful", "id": str(cm.id)}
