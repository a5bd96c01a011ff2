"""``core_webservice_get_site_info``: who the token is, and which functions its service offers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moodle_sandbox.params import DEFAULT, Multiple, Single, Value
from moodle_sandbox.registry import sandbox_function
from moodle_sandbox.seed import SITE_COURSE_ID

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

MOODLE_VERSION = "2025041400"
MOODLE_RELEASE = "5.0 (Build: 20250414)"


@sandbox_function(
    "core_webservice_get_site_info",
    Single({"serviceshortnames": Multiple(Value("alphanumext"), presence=DEFAULT)}),
)
def get_site_info(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    user = site.admin
    return {
        "sitename": site.state.courses[SITE_COURSE_ID].fullname,
        "username": user.username,
        "firstname": user.firstname,
        "lastname": user.lastname,
        "fullname": user.fullname,
        "lang": "en",
        "userid": user.id,
        "siteurl": site.base_url,
        "userpictureurl": site.image_url("u/f1"),
        "functions": [{"name": name, "version": MOODLE_VERSION} for name in site.service_functions],
        "downloadfiles": 1,
        "uploadfiles": int(site.upload_files),
        "release": MOODLE_RELEASE,
        "version": MOODLE_VERSION,
        "mobilecssurl": "",
        "advancedfeatures": [
            {"name": "usecomments", "value": 1},
            {"name": "usetags", "value": 1},
            {"name": "enablenotes", "value": 1},
            {"name": "messaging", "value": 1},
            {"name": "enableblogs", "value": 1},
            {"name": "enablecompletion", "value": 1},
            {"name": "enablebadges", "value": 1},
            {"name": "messagingallusers", "value": 0},
            {"name": "enablecustomreports", "value": 1},
            {"name": "enableglobalsearch", "value": 0},
            {"name": "mnet_dispatcher_mode", "value": 0},
            {"name": "enablecompetencies", "value": 1},
        ],
        "usercanmanageownfiles": True,
        "userquota": 0,
        "usermaxuploadfilesize": -1,
        "userhomepage": 1,
        "userprivateaccesskey": site.private_access_key,
        "siteid": SITE_COURSE_ID,
        "sitecalendartype": "gregorian",
        "usercalendartype": "gregorian",
        "userissiteadmin": user.siteadmin,
        "theme": "boost",
        "limitconcurrentlogins": 0,
        "policyagreed": 0,
    }
