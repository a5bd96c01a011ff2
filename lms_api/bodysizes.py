"""The sizes of the bodies the routes take, from the settings alone: the body limits hold each request to its route's,
and the server caps waitress at the largest, without importing the app's views, services or cache to learn it."""

from __future__ import annotations

from lms_api.settings import MIB, Settings

# Room for the multipart boundaries, part headers and small form fields around the files themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def upload_body_limit(max_mb: int) -> int:
    """The largest upload body: MOODLE_MAX_UPLOAD_MB of files, and room for the multipart framing around them."""
    return max_mb * MIB + MULTIPART_OVERHEAD_BYTES


def json_body_limit(settings: Settings) -> int:
    """The largest body of every other API route: MAX_JSON_BODY_KB."""
    return settings.max_json_body_kb * 1024


def largest_body(settings: Settings) -> int:
    """The largest body any route takes: an upload with its multipart framing, or a JSON body."""
    return max(upload_body_limit(settings.moodle_max_upload_mb), json_body_limit(settings))
