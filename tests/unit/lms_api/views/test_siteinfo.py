import json

import pytest
from marshmallow import ValidationError

from lms_api.schemas.siteinfo import SiteInfoSchema
from lms_api.views import MAX_REMEMBERED_DUMPS, AnswerDumps
from tests.unit.lms_api.views.support import answering, view_answer

SITE_INFO = "core_webservice_get_site_info"
ROUTE = "api.moodle.siteinfo"
INFO = {
    "sitename": "Moodle",
    "userid": 2,
    "userprivateaccesskey": "opens-every-file",
    "functions": [{"name": SITE_INFO, "version": "2025041400"}],
}


def test_site_info_answers_only_the_documented_fields_through_the_read_cache(make_request, moodle):
    answering(moodle, core_webservice_get_site_info=INFO)

    data = view_answer(make_request("/api/moodle/siteinfo", route=ROUTE))

    assert data == {"sitename": "Moodle", "userid": 2, "functions": [{"name": SITE_INFO, "version": "2025041400"}]}
    assert [call.args[0] for call in moodle.answer.call_args_list] == [SITE_INFO]
    moodle.call.assert_not_called()


def test_a_cached_site_info_is_answered_again_without_asking_moodle(make_request, moodle):
    answering(moodle, core_webservice_get_site_info=INFO)
    first = make_request("/api/moodle/siteinfo", route=ROUTE)
    view_answer(first)

    again = make_request("/api/moodle/siteinfo", route=ROUTE)
    view_answer(again)

    assert again.answered.body == first.answered.body
    assert moodle.answer.call_count == 1


def test_a_query_parameter_is_refused_before_moodle_is_asked(make_request, moodle):
    with pytest.raises(ValidationError) as refused:
        view_answer(make_request("/api/moodle/siteinfo?lang=en", route=ROUTE))

    assert refused.value.messages == {"lang": ["Unknown field."]}
    moodle.answer.assert_not_called()
    moodle.call.assert_not_called()


class CountingSchema(SiteInfoSchema):
    dumps = 0

    def dump(self, obj, *, many=None):
        CountingSchema.dumps += 1
        return super().dump(obj, many=many)


def test_a_shared_answer_is_dumped_once_while_remembered_and_by_identity_not_equality():
    CountingSchema.dumps = 0
    dumped = AnswerDumps(CountingSchema(), remember=True)
    info = {"sitename": "Moodle", "userid": 2}

    first, again = dumped(info), dumped(info)
    equal_but_another = dumped(dict(info))

    assert json.loads(first) == {"sitename": "Moodle", "userid": 2} and again == first == equal_but_another
    assert CountingSchema.dumps == 2


def test_the_remembered_dumps_are_bounded_oldest_out_first():
    CountingSchema.dumps = 0
    dumped = AnswerDumps(CountingSchema(), remember=True)
    answers = [{"userid": number} for number in range(MAX_REMEMBERED_DUMPS + 1)]

    for answer in answers:
        dumped(answer)
    dumped(answers[-1])  # still remembered
    dumped(answers[0])  # pushed out by the last one

    assert CountingSchema.dumps == len(answers) + 1


def test_an_answer_not_declared_shared_is_dumped_every_time():
    CountingSchema.dumps = 0
    dumped = AnswerDumps(CountingSchema(), remember=False)
    info = {"sitename": "Moodle"}

    dumped(info)
    dumped(info)

    assert CountingSchema.dumps == 2
