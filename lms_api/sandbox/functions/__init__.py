"""The web-service functions of the sandbox; importing this package registers them all."""

from lms_api.sandbox.functions import courses, enrol, messages, sync_service, users, webservice

__all__ = ["courses", "enrol", "messages", "sync_service", "users", "webservice"]
