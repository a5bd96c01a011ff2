"""The interactive API docs at ``GET /api/moodle/docs``: Swagger UI on the OpenAPI document, from the assets the
swagger-ui-py package ships (no CDN: it works with no internet). Paste a token from ``lms-api token`` into
"Authorize" and try any route.

The page is where a caller pastes a token, so it runs no inline script and nothing from elsewhere (its
Content-Security-Policy), cannot be framed, and keeps the token in the page's memory only: a reload forgets it.
Of the package's 25 MB of assets, only the few files the page loads are served.
"""

from __future__ import annotations

from importlib.resources import files

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.caller import KeptLocationResponse

DOCS_PATH = "/api/moodle/docs"
DOCS_ROUTE = "api.moodle.docs"
ASSETS_PATH = "/api/moodle/docs/assets/{name}"
INIT_SCRIPT = "lms-api-docs.js"

# Swagger UI sets its styles through the DOM (React's style properties), which a policy does not govern, save one
# <style> element: the top bar's logo's, allowed by its hash alone. Its stylesheet's icons are data: URLs; the
# document and "Try it out" are fetched from the gateway itself.
LOGO_STYLE = ".logo_small_svg__cls-2{fill:#fff}.logo_small_svg__cls-3{fill:#85ea2d}"  # swagger-ui-standalone-preset.js
LOGO_STYLE_HASH = "sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w="
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src 'self'; style-src 'self' '{LOGO_STYLE_HASH}'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}

# Relative to the page (/api/moodle/docs), so a path prefix in front of the gateway changes nothing.
_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>lms_api: API docs</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script src="docs/assets/swagger-ui-standalone-preset.js"></script>
  <script src="docs/assets/{INIT_SCRIPT}"></script>
</body>
</html>
"""

# No persistAuthorization: the token stays in memory, never in localStorage. No validator: it would send the
# document's URL to validator.swagger.io and load its badge from there.
_INIT = """window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout",
});
"""

# The files the page loads, by name: swagger-ui-py's, and the page's own start script.
_SWAGGER_UI_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Read once at start-up (about 1.9 MB): a missing file stops the start instead of breaking the page."""
    static = files("swagger_ui") / "static"
    assets = {name: (static.joinpath(name).read_bytes(), kind) for name, kind in _SWAGGER_UI_ASSETS.items()}
    assets[INIT_SCRIPT] = (_INIT.encode(), "text/javascript")
    return assets


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def docs_page(request: Request) -> Response:
    return _secured(Response(_PAGE, content_type="text/html", charset="utf-8"))


def docs_asset(request: Request) -> Response:
    asset = request.registry.docs_assets.get(request.matchdict["name"])
    if asset is None:
        raise HTTPNotFound()  # the envelope's 404, as for any unknown path
    body, kind = asset
    charset = None if kind.startswith("image/") else "utf-8"
    return _secured(Response(body=body, content_type=kind, charset=charset))


def to_docs(request: Request) -> Response:
    """``/`` and ``/api/moodle/docs/``: the docs page, where a person opening the gateway's address wants to be."""
    return KeptLocationResponse(status=302, location=request.public_url(request.route_path(DOCS_ROUTE)))


def includeme(config: Configurator) -> None:
    config.registry.docs_assets = _assets()
    config.add_route(DOCS_ROUTE, DOCS_PATH)
    config.add_view(docs_page, route_name=DOCS_ROUTE, request_method="GET", permission=NO_PERMISSION_REQUIRED)
    # Not named api.moodle.*: these are no API operations, so the OpenAPI document leaves them out.
    config.add_route("docs.asset", ASSETS_PATH)
    config.add_view(docs_asset, route_name="docs.asset", request_method="GET", permission=NO_PERMISSION_REQUIRED)
    for name, path in (("docs.root", "/"), ("docs.trailing_slash", DOCS_PATH + "/")):
        config.add_route(name, path)
        config.add_view(to_docs, route_name=name, request_method="GET", permission=NO_PERMISSION_REQUIRED)
