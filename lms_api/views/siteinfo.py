from typing import Any

from pyramid.request import Request

from lms_api.cache import CachedMoodle
from lms_api.jsoncodec import dumps
from lms_api.schemas.base import load_query
from lms_api.schemas.siteinfo import SiteInfoQuery, SiteInfoSchema
from lms_api.security import Scope
from lms_api.views import SerializedData, api_view

_query = SiteInfoQuery()
_site_info = SiteInfoSchema()


@api_view(
    route_name="api.moodle.siteinfo",
    request_method="GET",
    permission=Scope.SITEINFO_READ,
    query=_query,
    answers=_site_info,
    cached=True,
)
def site_info(request: Request) -> object:
    """The Moodle site's information and the functions of the gateway's token.

    Every field of Moodle's `core_webservice_get_site_info` except `userprivateaccesskey`. Cached (`siteinfo`).
    """
    load_query(request, _query)
    return request.find_service(CachedMoodle).derived_site_info(_serialized)


def _serialized(info: dict[str, Any]) -> SerializedData:
    return SerializedData(dumps(_site_info.dump(info)))
