"""The sandbox's Moodle site: seeded data, its web-service functions, and the REST server's checks in order."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lms_api.sandbox.errors import MoodleException, invalid_token, not_in_service, unknown_function
from lms_api.sandbox.params import DEFAULT, Multiple, Single, Value, invalid_parameter, validate
from lms_api.sandbox.phpform import PhpArray

MOODLE_VERSION = "2025041400"
MOODLE_RELEASE = "5.0 (Build: 20250414)"
DEFAULT_MAX_INPUT_VARS = 5000


@dataclass(frozen=True)
class SandboxFunction:
    name: str
    params: Single
    run: Callable[[SandboxSite, dict[str, Any]], Any]


FUNCTIONS: dict[str, SandboxFunction] = {}


def sandbox_function(name: str, params: Single) -> Callable:
    def register(run: Callable[[SandboxSite, dict[str, Any]], Any]) -> Callable:
        FUNCTIONS[name] = SandboxFunction(name, params, run)
        return run

    return register


@dataclass
class SiteUser:
    id: int
    username: str
    firstname: str
    lastname: str
    siteadmin: bool = False

    @property
    def fullname(self) -> str:
        return f"{self.firstname} {self.lastname}"


class SandboxSite:
    """State and behaviour of one emulated Moodle site; safe to use from many server threads."""

    def __init__(
        self,
        token: str,
        base_url: str = "http://127.0.0.1",
        service_functions: Iterable[str] | None = None,
        debug: bool = False,
        max_input_vars: int = DEFAULT_MAX_INPUT_VARS,
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.debug = debug
        self.max_input_vars = max_input_vars
        self.service_functions = list(service_functions) if service_functions is not None else sorted(FUNCTIONS)
        self.lock = threading.RLock()
        self.private_access_key = secrets.token_hex(16)
        self.admin = SiteUser(2, "admin", "Admin", "User", siteadmin=True)

    def rest(self, form: PhpArray) -> Any:
        """Run one ``server.php`` call; checks happen in Moodle's order: token, function, params."""
        # The REST server's own parameters never reach the function.
        form = PhpArray((key, value) for key, value in form.items() if not key.startswith("moodlewssetting"))
        token = form.pop("wstoken", None)
        function = form.pop("wsfunction", None)
        form.pop("moodlewsrestformat", None)
        if token != self.token:
            raise invalid_token()
        if not isinstance(function, str) or not function:
            raise invalid_parameter("Missing function name")
        if function not in FUNCTIONS:
            raise unknown_function(function, self.debug)
        if function not in self.service_functions:
            raise not_in_service(function)
        definition = FUNCTIONS[function]
        params = validate(definition.params, form)
        with self.lock:
            return definition.run(self, params)

    def error_body(self, error: MoodleException) -> dict[str, Any]:
        return error.body(self.debug)


@sandbox_function(
    "core_webservice_get_site_info",
    Single({"serviceshortnames": Multiple(Value("alphanumext"), presence=DEFAULT)}),
)
def get_site_info(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    user = site.admin
    return {
        "sitename": "lms_api Moodle sandbox",
        "username": user.username,
        "firstname": user.firstname,
        "lastname": user.lastname,
        "fullname": user.fullname,
        "lang": "en",
        "userid": user.id,
        "siteurl": site.base_url,
        "userpictureurl": f"{site.base_url}/theme/image.php/boost/core/1/u/f1",
        "functions": [{"name": name, "version": MOODLE_VERSION} for name in site.service_functions],
        "downloadfiles": 1,
        "uploadfiles": 1,
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
        "siteid": 1,
        "sitecalendartype": "gregorian",
        "usercalendartype": "gregorian",
        "userissiteadmin": user.siteadmin,
        "theme": "boost",
        "limitconcurrentlogins": 0,
        "policyagreed": 0,
    }
