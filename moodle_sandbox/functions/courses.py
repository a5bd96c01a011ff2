"""Course functions as ``course/externallib.php`` runs them for a site admin.

Listing: ``core_course_get_courses`` (every field, front page included), ``core_course_get_courses_by_field`` (the
public structure plus the manager-only extras) and ``core_course_search_courses`` (public structure, front page never
listed). Writing: ``core_course_create_courses`` (one transaction) and ``core_course_update_courses`` (each failure a
warning, no transaction); each course written triggers ``\\core\\event\\course_created`` or ``course_updated``.

A course can end up in a category that does not exist: ``update_course()`` writes the new category before it looks
for the category's context, and nothing undoes the write. Such a course is still listed by ``get_courses`` and
``get_courses_by_field`` (with an empty ``categoryname``), but every search that finds it fails.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import (
    MoodleException,
    PhpError,
    course_ids_read_error,
    missing_record,
    moodle_exception,
)
from moodle_sandbox.functions.formatting import format_string, format_text, validate_format
from moodle_sandbox.params import DEFAULT, OPTIONAL, Multiple, Single, Value, invalid_parameter
from moodle_sandbox.php import is_valid_plugin_name, php_empty, php_intval, php_loose_equals, php_trim, strip_tags
from moodle_sandbox.records import Course, SiteState
from moodle_sandbox.registry import sandbox_function
from moodle_sandbox.seed import EDITING_TEACHER_ROLE_ID, FORMAT_OPTIONS, SITE_COURSE_ID

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

AVAILABLE_LANGS = ("en",)  # get_string_manager()->get_list_of_translations() of a stock site
_FORMAT_OPTION_LIST = Multiple(Single({"name": Value("alphanumext"), "value": Value("raw")}), OPTIONAL)
_CUSTOM_FIELD_LIST = Multiple(Single({"shortname": Value("alphanumext"), "value": Value("raw")}), OPTIONAL)


def _course_fields(defaults: dict[str, Any]) -> dict[str, Value | Multiple]:
    """The optional course fields of create (with the site's ``moodlecourse`` defaults) and update (no defaults)."""

    def value(kind: str, name: str) -> Value:
        return Value(kind, DEFAULT, defaults[name]) if name in defaults else Value(kind, OPTIONAL)

    return {
        "idnumber": Value("raw", OPTIONAL),
        "summary": Value("raw", OPTIONAL),
        "summaryformat": value("int", "summaryformat"),
        "format": value("plugin", "format"),
        "showgrades": value("int", "showgrades"),
        "newsitems": value("int", "newsitems"),
        "startdate": Value("int", OPTIONAL),
        "enddate": Value("int", OPTIONAL),
        "numsections": Value("int", OPTIONAL),
        "maxbytes": value("int", "maxbytes"),
        "showreports": value("int", "showreports"),
        "visible": Value("int", OPTIONAL),
        "hiddensections": Value("int", OPTIONAL),
        "groupmode": value("int", "groupmode"),
        "groupmodeforce": value("int", "groupmodeforce"),
        "defaultgroupingid": value("int", "defaultgroupingid"),
        "enablecompletion": Value("int", OPTIONAL),
        "completionnotify": Value("int", OPTIONAL),
        "lang": Value("safedir", OPTIONAL),
        "forcetheme": Value("plugin", OPTIONAL),
        "courseformatoptions": _FORMAT_OPTION_LIST,
        "customfields": _CUSTOM_FIELD_LIST,
    }


_CREATE_DEFAULTS = {
    "summaryformat": 1,
    "format": "topics",
    "showgrades": 1,
    "newsitems": 5,
    "maxbytes": 0,
    "showreports": 0,
    "groupmode": 0,
    "groupmodeforce": 0,
    "defaultgroupingid": 0,
}
CREATE_COURSES = Single(
    {
        "courses": Multiple(
            Single(
                {
                    "fullname": Value("text"),
                    "shortname": Value("text"),
                    "categoryid": Value("int"),
                    **_course_fields(_CREATE_DEFAULTS),
                }
            )
        )
    }
)
UPDATE_COURSES = Single(
    {
        "courses": Multiple(
            Single(
                {
                    "id": Value("int"),
                    "fullname": Value("text", OPTIONAL),
                    "shortname": Value("text", OPTIONAL),
                    "categoryid": Value("int", OPTIONAL),
                    **_course_fields({}),
                }
            )
        )
    }
)
GET_COURSES = Single({"options": Single({"ids": Multiple(Value("int"), OPTIONAL)}, DEFAULT, {})})
GET_COURSES_BY_FIELD = Single({"field": Value("alpha", DEFAULT, ""), "value": Value("raw", DEFAULT, "")})
SEARCH_COURSES = Single(
    {
        "criterianame": Value("alpha"),
        "criteriavalue": Value("raw"),
        "page": Value("int", DEFAULT, 0),
        "perpage": Value("int", DEFAULT, 0),
        "requiredcapabilities": Multiple(Value("capability"), DEFAULT),
        "limittoenrolled": Value("bool", DEFAULT, False),
        "onlywithcompletion": Value("bool", DEFAULT, False),
    }
)
_SEARCH_CRITERIA = ("search", "modulelist", "blocklist", "tagid")
# filter_get_available_in_context() of a course on a stock site: the filters enabled site-wide, none set locally.
_COURSE_FILTERS = ("displayh5p", "activitynames", "mathjaxloader", "emoticon", "urltolink", "mediaplugin")
_CANONICAL_ID = re.compile(r"0|[1-9][0-9]*")  # an id PHP turns into an integer array key


# --- Answers --------------------------------------------------------------------------------------------------------


def _format_option_list(options: dict[str, int | str]) -> list[dict[str, int | str]]:
    return [{"name": name, "value": value} for name, value in options.items()]


def get_courses_record(course: Course) -> dict[str, Any]:
    """One course as ``core_course_get_courses`` answers a site admin (key order of its returns description)."""
    summary, summaryformat = format_text(course.summary, course.summaryformat)
    record: dict[str, Any] = {
        "id": course.id,
        "shortname": format_string(course.shortname),
        "categoryid": course.category,
        "categorysortorder": course.sortorder,
        "fullname": format_string(course.fullname),
        "displayname": format_string(course.fullname),
        "idnumber": course.idnumber,
        "summary": summary,
        "summaryformat": summaryformat,
        "format": course.format,
        "showgrades": course.showgrades,
        "newsitems": course.newsitems,
        "startdate": course.startdate,
        "enddate": course.enddate,
        "numsections": course.last_section,
        "maxbytes": course.maxbytes,
        "showreports": course.showreports,
        "visible": course.visible,
    }
    if "hiddensections" in course.format_options:
        record["hiddensections"] = course.format_options["hiddensections"]
    return record | {
        "groupmode": course.groupmode,
        "groupmodeforce": course.groupmodeforce,
        "defaultgroupingid": course.defaultgroupingid,
        "timecreated": course.timecreated,
        "timemodified": course.timemodified,
        "enablecompletion": course.enablecompletion,
        "completionnotify": course.completionnotify,
        "lang": course.lang,
        "forcetheme": course.theme,
        "courseformatoptions": _format_option_list(course.format_options),
        "showactivitydates": course.showactivitydates,
        "showcompletionconditions": course.showcompletionconditions,
    }


def course_image_url(site: SandboxSite, course: Course) -> str:
    """``$OUTPUT->get_generated_url_for_course()``: no course of the sandbox has an image of its own."""
    return f"{site.base_url}/pluginfile.php/{course.contextid}/course/generated/course.svg"


def public_record(site: SandboxSite, course: Course) -> dict[str, Any]:
    """``get_course_public_information()``: what search and get_courses_by_field show anyone who may see the course.

    ``customfields`` (none on a stock site) is left out. A missing category has an empty ``categoryname``, as
    Moodle reads it with IGNORE_MISSING.
    """
    category = site.state.categories.get(course.category)
    summary, summaryformat = format_text(course.summary, course.summaryformat)
    now = site.now()
    contacts = sorted(
        (
            site.state.users[enrolment.userid]
            for enrolment in site.state.enrolments.values()
            if enrolment.courseid == course.id
            and enrolment.is_active(now)
            and EDITING_TEACHER_ROLE_ID in enrolment.roleids
        ),
        key=lambda user: (user.lastname, user.firstname, user.id),
    )
    return {
        "id": course.id,
        "fullname": format_string(course.fullname),
        "displayname": format_string(course.fullname),
        "shortname": format_string(course.shortname),
        "courseimage": course_image_url(site, course),
        "categoryid": course.category,
        "categoryname": format_string(category.name) if category else "",
        "sortorder": course.sortorder,
        "summary": summary,
        "summaryformat": summaryformat,
        "summaryfiles": [],
        "overviewfiles": [],
        "showactivitydates": course.showactivitydates,
        "showcompletionconditions": course.showcompletionconditions,
        "contacts": [{"id": user.id, "fullname": format_string(user.fullname)} for user in contacts],
        "enrollmentmethods": [] if course.id == SITE_COURSE_ID else ["manual"],
    }


def _by_field_record(site: SandboxSite, course: Course) -> dict[str, Any]:
    """The public structure plus what ``get_courses_by_field`` adds for a manager."""
    config = dict(course.format_options)
    if course.format in ("topics", "weeks"):
        config["indentation"] = "1"  # format_*::get_config_for_external() adds the plugin setting
    elif course.format == "site":
        config = {}
    return public_record(site, course) | {
        "idnumber": course.idnumber,
        "format": course.format,
        "showgrades": course.showgrades,
        "newsitems": course.newsitems,
        "startdate": course.startdate,
        "enddate": course.enddate,
        "maxbytes": course.maxbytes,
        "showreports": course.showreports,
        "visible": course.visible,
        "groupmode": course.groupmode,
        "groupmodeforce": course.groupmodeforce,
        "defaultgroupingid": course.defaultgroupingid,
        "enablecompletion": course.enablecompletion,
        "completionnotify": course.completionnotify,
        "lang": course.lang,
        "theme": course.theme,
        "marker": course.marker,
        "legacyfiles": course.legacyfiles,
        "calendartype": course.calendartype,
        "timecreated": course.timecreated,
        "timemodified": course.timemodified,
        "requested": course.requested,
        "cacherev": course.cacherev,
        "filters": [{"filter": name, "localstate": 0, "inheritedstate": 1} for name in _COURSE_FILTERS],
        "courseformatoptions": _format_option_list(config),
    }


# --- Listing ----------------------------------------------------------------------------------------------------------


@sandbox_function("core_course_get_courses", GET_COURSES)
def get_courses(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """All courses (front page included) or those of ``options[ids]``, unknown ids skipped, in id order."""
    courses = site.state.courses
    ids = params["options"].get("ids")
    chosen = sorted(set(ids) & set(courses)) if ids else sorted(courses)
    return [get_courses_record(courses[course_id]) for course_id in chosen]


@sandbox_function("core_course_get_courses_by_field", GET_COURSES_BY_FIELD)
def get_courses_by_field(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    """Courses whose ``field`` (id, ids, shortname, idnumber, category; none for all) matches exactly, by id."""
    field, value = params["field"], params["value"]
    courses = site.state.courses
    if field == "":
        found = [courses[course_id] for course_id in sorted(courses)]
    elif field in ("id", "category"):
        wanted = php_intval(value)
        column = "id" if field == "id" else "category"
        found = [courses[course_id] for course_id in sorted(courses) if getattr(courses[course_id], column) == wanted]
    elif field == "ids":
        found = _courses_by_ids(site, re.sub(r"[^0-9,]", "", value))
    elif field in ("shortname", "idnumber"):
        wanted_text = strip_tags(value) if field == "shortname" else value  # PARAM_TEXT and PARAM_RAW
        found = [
            courses[course_id] for course_id in sorted(courses) if getattr(courses[course_id], field) == wanted_text
        ]
    else:
        raise invalid_parameter("Invalid field name")
    # The warnings are those of courses the token user may not enter, which never happens to a site admin.
    return {"courses": [_by_field_record(site, course) for course in found], "warnings": []}


def _courses_by_ids(site: SandboxSite, sequence: str) -> list[Course]:
    """``util::validate_courses($ids, [], false, true)``: the courses in the order asked, repeats dropped.

    Moodle 5.0 keeps a course it could not validate by setting ``contextvalidated`` on it, but a missing course is
    no object, so PHP stops with an ``Error``: one missing id fails the whole call. So does an id written with a
    leading zero: its context is found, but the loaded courses are keyed by the plain number.
    """
    pieces = sequence.split(",")
    unreadable = course_ids_read_error(pieces)
    if unreadable is not None:
        raise unreadable
    found = []
    for piece in dict.fromkeys(pieces):  # array_unique() compares the ids as strings
        course = site.state.courses.get(int(piece)) if _CANONICAL_ID.fullmatch(piece) else None
        if course is None:
            raise PhpError("Error", 'Attempt to assign property "contextvalidated" on null')
        found.append(course)
    return found


@sandbox_function("core_course_search_courses", SEARCH_COURSES)
def search_courses(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    """Matches in category sort order; ``total`` counts them all, ``courses`` is page ``page`` of ``perpage``."""
    criterion, value = params["criterianame"], params["criteriavalue"]
    if criterion not in _SEARCH_CRITERIA:
        raise invalid_parameter(
            f"Invalid value for criterianame parameter (value: {criterion}),"
            f"allowed values are: {','.join(_SEARCH_CRITERIA)}"
        )
    courses = [course for course in site.state.courses.values() if _criterion_matches(site, criterion, value, course)]
    if params["onlywithcompletion"]:
        courses = [course for course in courses if course.enablecompletion]
    courses.sort(key=lambda course: course.sortorder)
    _require_course_categories(site, courses)
    total = len(courses)
    if params["perpage"]:
        offset = params["page"] * params["perpage"]
        courses = [course for index, course in enumerate(courses) if offset <= index < offset + params["perpage"]]
    if params["limittoenrolled"]:
        # Moodle drops the token user's other courses from this page only, and takes them off the total.
        now, enrolments = site.now(), site.state.enrolments
        mine = [
            course
            for course in courses
            if (course.id, site.admin.id) in enrolments and enrolments[(course.id, site.admin.id)].is_active(now)
        ]
        total -= len(courses) - len(mine)
        courses = mine
    return {"total": total, "courses": [public_record(site, course) for course in courses], "warnings": []}


def _require_course_categories(site: SandboxSite, courses: list[Course]) -> None:
    """``core_course_category::can_view_course_info()`` runs on every match the token user is not enrolled in,
    before paging; it takes the category's context with MUST_EXIST, so a course in a missing category fails the
    search."""
    now, enrolments = site.now(), site.state.enrolments
    for course in courses:
        enrolment = enrolments.get((course.id, site.admin.id))
        mine = enrolment is not None and enrolment.is_active(now)
        if not mine and course.category not in site.state.categories:
            raise missing_record("course_categories", "id,parent", course.category, site.debug)


def _criterion_matches(site: SandboxSite, criterion: str, value: str, course: Course) -> bool:
    """``core_course_category::search_courses()``; blocks and tags are not modelled, so they never match."""
    if criterion == "search":
        terms = value.split()
        return not php_empty(value) and bool(terms) and course.id != SITE_COURSE_ID and _text_matches(course, terms)
    if criterion == "modulelist":
        modname = value if is_valid_plugin_name(value) else ""
        return modname != "" and any(
            cm.course == course.id and cm.modname == modname for cm in site.state.course_modules.values()
        )
    return False


def _text_matches(course: Course, terms: list[str]) -> bool:
    """``get_courses_search()``: each term in summary, full name, idnumber or short name, case-insensitively.

    A plain term is an SQL ``ILIKE '%term%'`` (so ``%`` and ``_`` are wildcards); ``+word`` must and ``-word`` must
    not occur as a whole word.
    """
    haystack = f"{course.summary} {course.fullname} {course.idnumber} {course.shortname}"
    for term in terms:
        if term.startswith("+") or (term.startswith("-") and len(term) > 1):
            word = re.escape(term.strip("+-"))
            found = re.search(rf"(^|[^a-zA-Z0-9]){word}([^a-zA-Z0-9]|$)", haystack, re.IGNORECASE) is not None
            if found != term.startswith("+"):
                return False
        elif not re.search(_like_pattern(term), haystack, re.IGNORECASE | re.DOTALL):
            return False
    return True


def _like_pattern(term: str) -> str:
    """The regular expression of SQL ``LIKE '%term%'`` with ``\\`` as the escape character."""
    pieces, escaped = [], False
    for char in term:
        if escaped:
            pieces.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            pieces.append({"%": ".*", "_": "."}.get(char, re.escape(char)))
    return "".join(pieces)


# --- Writing ----------------------------------------------------------------------------------------------------------


def _invalid_param(name: str) -> MoodleException:
    return moodle_exception("errorinvalidparam", f'The param "{name}" is invalid.')


def _validate_dates(fields: dict[str, Any]) -> None:
    """``course_validate_dates()`` on the fields given (an update checks only what it sends)."""
    start, end = fields.get("startdate", 0), fields.get("enddate", 0)
    if not php_empty(start) and not php_empty(end) and end < start:
        raise moodle_exception("enddatebeforestartdate", "The course end date must be after the start date.")
    if php_empty(start) and not php_empty(end):
        raise moodle_exception("nostartdatenoenddate", "A course end date can only be set if a start date is also set.")


def _taken(site: SandboxSite, column: str, value: str, course_id: int | None = None) -> bool:
    return any(getattr(other, column) == value and other.id != course_id for other in site.state.courses.values())


def _check_unique(site: SandboxSite, fields: dict[str, Any], course_id: int | None = None) -> None:
    shortname, idnumber = fields.get("shortname", ""), fields.get("idnumber", "")
    if not php_empty(shortname) and _taken(site, "shortname", shortname, course_id):
        raise moodle_exception("shortnametaken", f"Short name is already used for another course ({shortname})")
    if not php_empty(idnumber) and _taken(site, "idnumber", idnumber, course_id):
        raise moodle_exception("courseidnumbertaken", f"ID number is already used for another course ({idnumber})")


def _place_first(site: SandboxSite, course: Course, category: int) -> None:
    """Move ``course`` to the top of ``category``: Moodle puts a new or moved course before the others, then
    ``fix_course_sortorder()`` recounts the courses of every category."""
    base = site.state.categories[category].sortorder
    for other in site.state.courses.values():
        if other.category == category and other.id != course.id:
            other.sortorder += 1
    course.category, course.sortorder = category, base + 1
    fix_course_sortorder(site.state)


def fix_course_sortorder(state: SiteState) -> None:
    """What ``fix_course_sortorder()`` changes beyond the order: the front page's sort order (0 on a new site) and
    the course count of every category."""
    state.courses[SITE_COURSE_ID].sortorder = 1
    for category in state.categories.values():
        category.coursecount = sum(1 for course in state.courses.values() if course.category == category.id)


def _apply_format_options(course: Course, fields: dict[str, Any]) -> None:
    """``hiddensections`` and ``courseformatoptions`` land in the options the course format knows, as integers."""
    given = {option["name"]: option["value"] for option in fields.get("courseformatoptions", [])}
    if "hiddensections" in fields:
        given["hiddensections"] = fields["hiddensections"]
    for name, value in given.items():
        if name in course.format_options:
            default = FORMAT_OPTIONS[course.format][name]
            course.format_options[name] = php_intval(str(value)) if isinstance(default, int) else str(value)


_COPIED_FIELDS = (
    "fullname", "shortname", "idnumber", "summary", "summaryformat", "showgrades", "newsitems", "startdate", "enddate",
    "maxbytes", "showreports", "visible", "groupmode", "groupmodeforce", "defaultgroupingid", "enablecompletion",
    "completionnotify", "lang",
)  # fmt: skip


@sandbox_function("core_course_create_courses", CREATE_COURSES)
def create_courses(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """All or nothing: the first failing course rolls back those created before it in the same call."""
    with site.transaction():
        return [_create_course(site, fields) for fields in params["courses"]]


def _create_course(site: SandboxSite, fields: dict[str, Any]) -> dict[str, Any]:
    category = site.state.categories.get(fields["categoryid"])
    if category is None:  # validate_context() of a missing context, wrapped by create_courses()
        inner = invalid_parameter("Context does not exist").text(site.debug)
        raise moodle_exception(
            "errorcatcontextnotvalid",
            f"You cannot execute functions in the category context (category id:{fields['categoryid']}). "
            f"The context error message was: {inner}",
        )
    if php_trim(fields["fullname"]) == "":
        raise _invalid_param("fullname")
    if php_trim(fields["shortname"]) == "":
        raise _invalid_param("shortname")
    if "lang" in fields and fields["lang"] not in AVAILABLE_LANGS:
        raise _invalid_param("lang")
    validate_format(fields["summaryformat"])
    _check_unique(site, fields)
    _validate_dates(fields)
    now = site.now()
    course_format = fields["format"]
    course = Course(
        id=site.state.next_id("course"),
        shortname=fields["shortname"],
        fullname=fields["fullname"],
        category=category.id,
        format=course_format,
        sortorder=0,
        timecreated=now,
        timemodified=now,
        cacherev=now,
        visible=category.visible,
        format_options=dict(FORMAT_OPTIONS.get(course_format, {})),
        sections={number: [] for number in range(max(fields.get("numsections", 0), 0) + 1)},
        contextid=site.state.next_id("context"),
    )
    for name in _COPIED_FIELDS:
        if name in fields:
            setattr(course, name, fields[name])
    course.showcompletionconditions = True if course.enablecompletion else None
    _apply_format_options(course, fields)
    site.state.courses[course.id] = course
    _place_first(site, course, category.id)
    _trigger_course_event(site, "\\core\\event\\course_created", course)
    return {"id": course.id, "shortname": course.shortname}


def _trigger_course_event(site: SandboxSite, eventname: str, course: Course) -> None:
    """``course_created`` and ``course_updated``: the course is the object, in its own context, with no related
    user."""
    site.trigger(eventname, course.id, courseid=course.id, contextinstanceid=course.id)


@sandbox_function("core_course_update_courses", UPDATE_COURSES)
def update_courses(site: SandboxSite, params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each course on its own: a failure becomes a warning and the courses before it stay updated."""
    warnings = []
    for fields in params["courses"]:
        try:
            _update_course(site, fields)
        except MoodleException as error:
            warnings.append(
                {
                    "item": "course",
                    "itemid": fields["id"],
                    "warningcode": error.errorcode,
                    "message": error.text(site.debug),
                }
            )
    return {"warnings": warnings}


def _changes(old: Course, fields: dict[str, Any], name: str, column: str | None = None) -> bool:
    """``array_key_exists($name) && $old->column != $new``, with PHP's loose comparison."""
    if name not in fields:
        return False
    current = getattr(old, column or name)
    new = fields[name]
    return not (php_loose_equals(new, current) if isinstance(new, str) else new == current)


def _update_course(site: SandboxSite, fields: dict[str, Any]) -> None:
    course = site.state.courses.get(fields["id"])
    if course is None:  # context_course::instance($id, MUST_EXIST)
        raise missing_record("course", "id,category", fields["id"], site.debug)
    if _changes(course, fields, "fullname") and php_trim(fields["fullname"]) == "":
        raise _invalid_param("fullname")
    if _changes(course, fields, "shortname") and php_trim(fields["shortname"]) == "":
        raise _invalid_param("shortname")
    if _changes(course, fields, "summaryformat"):
        validate_format(fields["summaryformat"])
    if _changes(course, fields, "lang") and fields["lang"] not in AVAILABLE_LANGS:
        raise _invalid_param("lang")
    if course.id == SITE_COURSE_ID:  # update_course() refuses the front page
        raise moodle_exception("invalidcourse", "Invalid course")
    unique = {name: fields[name] for name in ("shortname", "idnumber") if _changes(course, fields, name)}
    _check_unique(site, unique, course.id)
    _validate_dates(fields)
    new_category = fields.get("categoryid", 0)
    moving = not php_empty(new_category) and new_category != course.category
    target = site.state.categories.get(new_category)
    visible = fields.get("visible", course.visible)
    if visible == course.visible and moving and (target is None or not target.visible):
        # Moved into a hidden category, or one get_record() does not find: empty($newcategory->visible) either way.
        visible = 0
    for name in _COPIED_FIELDS:
        if name in fields:
            setattr(course, name, fields[name])
    course.visible = visible
    if moving:
        course.category = new_category
    if fields.get("maxbytes") and site.max_bytes:
        course.maxbytes = min(fields["maxbytes"], site.max_bytes)
    if "format" in fields and fields["format"] != course.format:
        course.format = fields["format"]
        course.format_options = dict(FORMAT_OPTIONS.get(course.format, {}))
    if "enablecompletion" in fields:
        course.showcompletionconditions = True if course.enablecompletion else None
    _apply_format_options(course, fields)
    now = site.now()
    course.timemodified = now
    course.cacherev = max(now, course.cacherev + 1)  # rebuild_course_cache()
    if moving:
        if target is None:
            # Moodle has written the course, its new category included, before context_coursecat::instance() fails;
            # no transaction undoes it, and the sort order and course counts are not fixed. No event is triggered.
            raise missing_record("course_categories", "id,parent", new_category, site.debug)
        _place_first(site, course, new_category)
    _trigger_course_event(site, "\\core\\event\\course_updated", course)
