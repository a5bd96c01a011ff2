"""Moodle web-service function names the gateway uses, and which of them are safe to retry."""

SITE_INFO = "core_webservice_get_site_info"
# Not a web-service function: upload.php is its own script; the name labels its calls in logs and errors.
UPLOAD_FUNCTION = "upload.php"

# Only these are retried after a transport failure: calling them twice changes nothing in Moodle.
# Any function missing from this list is treated as a write and never sent twice.
READ_ONLY_FUNCTIONS = frozenset(
    {
        SITE_INFO,
        "core_course_get_categories",
        "core_course_get_courses",
        "core_course_get_courses_by_field",
        "core_course_search_courses",
        "core_user_get_users_by_field",
        "core_enrol_get_enrolled_users",
        "message_popup_get_popup_notifications",
        "message_popup_get_unread_popup_notification_count",
    }
)

# The read cache: the answers it may keep, by group (CACHE_TTLS sets each group's time to live). Existence checks
# before a write never use it; they call Moodle.
CACHED_FUNCTIONS = {
    SITE_INFO: "siteinfo",
    "core_course_get_courses": "courses",
    "core_course_get_courses_by_field": "courses",
    "core_course_search_courses": "courses",
    "core_user_get_users_by_field": "users",
    "message_popup_get_popup_notifications": "notifications",
    "message_popup_get_unread_popup_notification_count": "notifications",
}
# The groups a write may have changed: they are dropped once it may have reached Moodle, whatever its outcome.
# Enrolments, uploads and attached files change nothing the cache keeps.
INVALIDATED_BY = {
    "core_course_create_courses": ("courses",),
    "core_course_update_courses": ("courses",),
}
