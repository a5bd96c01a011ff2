"""gunicorn's settings for the gateway, which gunicorn reads from the directory it is started in:

    gunicorn --paste production.ini -k gthread -w <cores> --threads 16

The command line wins over what is set here. The hooks are lms_api/gunicorn.py's.
"""

from lms_api.gunicorn import on_starting, post_worker_init, pre_request, worker_exit
from lms_api.server import DEFAULT_THREADS

# gunicorn reads its hooks by name from this module.
__all__ = ["on_starting", "post_worker_init", "pre_request", "worker_exit"]

worker_class = "gthread"
# gunicorn --paste reads no [server:main], where pserve finds its threads: gunicorn's are set here or by --threads.
threads = DEFAULT_THREADS
# Idle connections are kept as long as waitress keeps them (120 s): nginx keeps its own to the gateway for 60 s
# (deploy/nginx), and one the gateway closed first could carry nginx's next request, lost (gunicorn's default: 2 s).
keepalive = 120
# X-Forwarded-* are left to lms_api.caller (TRUSTED_PROXIES), as waitress leaves them: gunicorn would otherwise take
# the scheme from X-Forwarded-Proto sent from 127.0.0.1.
secure_scheme_headers: dict[str, str] = {}
