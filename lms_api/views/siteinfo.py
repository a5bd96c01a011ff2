from pyramid.view import view_defaults

from lms_api.moodle.functions import MoodleFunction
from lms_api.schemas.siteinfo import SiteInfoQuery, SiteInfoSchema
from lms_api.security import Scope
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.siteinfo": "/api/moodle/siteinfo"})
@view_defaults(route_name="api.moodle.siteinfo")
class SiteInfoViews(ApiViews):
    @api_view(
        request_method="GET",
        permission=Scope.SITEINFO_READ,
        query=SiteInfoQuery(),
        answers=SiteInfoSchema(),
        cached=True,
        shared_answer=True,
    )
    def site_info(self) -> object:
        """The Moodle site's information and the functions of the gateway's token.

        Every field of Moodle's `core_webservice_get_site_info` except `userprivateaccesskey`. Cached (`siteinfo`).
        """
        return self.moodle.call(MoodleFunction.SITE_INFO)
