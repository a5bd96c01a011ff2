"""The web-service functions of the sandbox; importing this package registers them all."""

from moodle_sandbox.functions import categories, courses, enrol, messages, sync_service, users, webservice

__all__ = ["categories", "courses", "enrol", "messages", "sync_service", "users", "webservice"]
