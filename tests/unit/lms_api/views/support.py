"""What the view unit tests call: a fake client's answers set up from one table (:func:`answering`), the functions a
call asked, and a view called as the router calls it."""

import json

from pyramid.view import render_view_to_response

from lms_api.moodle.client import Answer


def answering(moodle, **answers):
    """Moodle's canned answer to each function, through ``call`` and through ``answer`` alike; any other function
    fails the test."""

    def value(function, params=None):
        assert function in answers, f"unexpected Moodle call {function}"
        answer = answers[function]
        return answer(params) if callable(answer) else answer

    moodle.call.side_effect = value
    moodle.answer.side_effect = lambda function, params=None: _with_body(value(function, params))


def _with_body(value):
    return Answer(value, json.dumps(value).encode())


def functions_asked(method):
    """The functions, and their parameters, one of the client's methods was asked for, in order."""
    return [call.args if len(call.args) > 1 else (*call.args, None) for call in method.call_args_list]


def view_answer(request):
    """The route's view for the request's method, called as the router calls it; the envelope's ``data``."""
    response = render_view_to_response(None, request)
    assert response is not None, "no view answers this route and method"
    body = json.loads(response.body)
    assert body["ok"] is True
    request.answered = response
    return body["data"]
