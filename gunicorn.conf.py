"""gunicorn's settings for the gateway, which gunicorn reads from the directory it is started in:

    gunicorn --paste production.ini -k gthread -w <cores> --threads 16

They and the hooks are lms_api/gunicorn.py's (``-c python:lms_api.gunicorn`` reads them from anywhere else).
"""

from lms_api.gunicorn import (
    child_exit,
    keepalive,
    on_exit,
    on_starting,
    post_fork,
    post_worker_init,
    pre_request,
    secure_scheme_headers,
    threads,
    when_ready,
    worker_class,
    worker_exit,
)

# gunicorn reads its settings and hooks by name from this module.
__all__ = [
    "child_exit",
    "keepalive",
    "on_exit",
    "on_starting",
    "post_fork",
    "post_worker_init",
    "pre_request",
    "secure_scheme_headers",
    "threads",
    "when_ready",
    "worker_class",
    "worker_exit",
]
