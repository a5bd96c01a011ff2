import json

import pytest
from marshmallow import ValidationError

from lms_api.views.siteinfo import site_info


def test_site_info_answers_only_the_documented_fields(make_request, moodle):
    moodle.site_info.return_value = {
        "sitename": "Moodle",
        "userid": 2,
        "userprivateaccesskey": "opens-every-file",
        "functions": [{"name": "core_webservice_get_site_info", "version": "2025041400"}],
    }

    data = json.loads(site_info(make_request("/api/moodle/siteinfo")).json)

    assert data == {
        "sitename": "Moodle",
        "userid": 2,
        "functions": [{"name": "core_webservice_get_site_info", "version": "2025041400"}],
    }
    moodle.site_info.assert_called_once_with()


def test_a_query_parameter_is_refused_before_moodle_is_asked(make_request, moodle):
    with pytest.raises(ValidationError) as refused:
        site_info(make_request("/api/moodle/siteinfo?lang=en"))

    assert refused.value.messages == {"lang": ["Unknown field."]}
    moodle.site_info.assert_not_called()
