"""The Moodle sandbox seen from behind the gateway's back: its state, its call counts, the faults it is told to play."""

import requests

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.server import Fault


def moodle_call(server, function, **params):
    """Call the sandbox directly, as Moodle's REST server, to check its state behind the gateway's back."""
    form = {"wstoken": server.site.token, "wsfunction": function, "moodlewsrestformat": "json"}
    response = requests.post(server.url + "/webservice/rest/server.php", data=[*form.items(), *encode_params(params)])
    return response.json()


def sandbox_calls(server):
    with server.state_lock:
        return dict(server.calls)


def queue_fault(server, **fault):
    with server.state_lock:
        server.faults.append(Fault(**fault))


def clear_faults(server):
    with server.state_lock:
        server.faults.clear()
