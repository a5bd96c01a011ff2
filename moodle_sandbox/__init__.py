"""A Moodle web-service emulator: same endpoints, JSON shapes and HTTP-200 errors as a real Moodle 5.0."""
