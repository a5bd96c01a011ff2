"""``core_course_get_categories`` as ``course/externallib.php`` runs it for a site admin (read only).

Criteria are ANDed; a key given twice counts once (``ids`` excepted, as Moodle files its values under other names).
With ``addsubcategories`` (the default) every category below a match is added. A site admin sees every category
with the manager-only fields, sorted by ``sortorder`` compared as strings (Moodle's ``strcmp``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import MoodleException, ids_read_error
from moodle_sandbox.functions.formatting import format_string, format_text
from moodle_sandbox.params import DEFAULT, INSTALLED_THEMES, Multiple, Single, Value
from moodle_sandbox.php import php_intval, strip_tags
from moodle_sandbox.records import Category, SiteState
from moodle_sandbox.registry import sandbox_function

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

GET_CATEGORIES = Single(
    {
        "criteria": Multiple(Single({"key": Value("alpha"), "value": Value("raw")}), DEFAULT),
        "addsubcategories": Value("bool", DEFAULT, True),
    }
)


def category_path(state: SiteState, category: Category) -> str:
    """``/1/4/7``: the ids from the top category down to this one."""
    ids = [category.id]
    parent = state.categories.get(category.parent)
    while parent is not None and parent.id not in ids:
        ids.insert(0, parent.id)
        parent = state.categories.get(parent.parent)
    return "/" + "/".join(str(category_id) for category_id in ids)


def _criteria_error(debuginfo: str) -> MoodleException:
    return MoodleException(
        "core\\exception\\moodle_exception",
        "criteriaerror",
        "Missing permissions to search on a criterion.",
        debuginfo,
    )


def _matcher(key: str, value: str) -> Any:
    """The WHERE condition of one criterion, as a test on a category; ``None`` for an unknown key, and for ids
    PostgreSQL cannot read the error its query will raise."""
    if key in ("id", "parent", "visible"):  # PARAM_INT
        number = php_intval(value)
        return lambda category: getattr(category, key) == number
    if key == "ids":
        pieces = re.sub(r"[^0-9,]", "", value).split(",")  # PARAM_SEQUENCE, then explode()
        unreadable = ids_read_error("SELECT * FROM {course_categories} WHERE id", pieces)
        if unreadable is not None:
            return unreadable  # raised by the query, once every criterion has been checked
        ids = {int(piece) for piece in pieces}
        return lambda category: category.id in ids
    if key == "name":
        text = strip_tags(value)  # PARAM_TEXT
        return lambda category: category.name == text
    if key == "idnumber":
        return lambda category: category.idnumber == value
    if key == "theme":
        theme = value if value in INSTALLED_THEMES else ""  # PARAM_THEME
        return lambda category: category.theme == theme  # a NULL theme equals nothing in SQL
    return None


@sandbox_function("core_course_get_categories", GET_CATEGORIES)
def get_categories(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    state = site.state
    categories = list(state.categories.values())
    if params["criteria"]:
        tests: dict[str, Any] = {}
        for number, criterion in enumerate(params["criteria"]):
            key = criterion["key"].strip()
            if key in tests:
                continue
            test = _matcher(key, criterion["value"])
            if test is None:
                raise _criteria_error(f"You can not search on this criteria: {key}")
            tests[key if key != "ids" else f"ids{number}"] = test
        for test in tests.values():
            if isinstance(test, MoodleException):
                raise test
        matches = [category for category in categories if all(test(category) for test in tests.values())]
        if matches and params["addsubcategories"]:
            # Below a match means under its path; a visible or theme criterion applies to those as well.
            kept = [test for key, test in tests.items() if key in ("visible", "theme")]
            paths = [category_path(state, category) + "/" for category in matches]
            matches += [
                category
                for category in categories
                if category not in matches
                and any(category_path(state, category).startswith(path) for path in paths)
                and all(test(category) for test in kept)
            ]
        categories = matches
    categories.sort(key=lambda category: str(category.sortorder))  # usort() with strcmp(), which is stable
    return [_category_record(state, category) for category in categories]


def _category_record(state: SiteState, category: Category) -> dict[str, Any]:
    """One category with the manager-only fields, in the key order of the returns description."""
    description, descriptionformat = format_text(category.description, category.descriptionformat)
    path = category_path(state, category)
    return {
        "id": category.id,
        "name": format_string(category.name),
        "idnumber": category.idnumber,
        "description": description,
        "descriptionformat": descriptionformat,
        "parent": category.parent,
        "sortorder": category.sortorder,
        "coursecount": category.coursecount,
        "visible": category.visible,
        "visibleold": category.visibleold,
        "timemodified": category.timemodified,
        "depth": path.count("/"),
        "path": path,
        "theme": category.theme if category.theme in INSTALLED_THEMES else "",
    }
