"""The interactive API docs at ``GET /api/moodle/docs``: Swagger UI on the OpenAPI document, from the assets the
swagger-ui-py package ships (no CDN: it works with no internet). Paste a token from ``lms-api token`` into
"Authorize" and try any route."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED

DOCS_PATH = "/api/moodle/docs"
ASSETS = "api/moodle/docs/assets"  # served from the package, beside the page

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>lms_api: API docs</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{document}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    }});
  </script>
</body>
</html>
"""


# Relative to the page (/api/moodle/docs), so a path prefix in front of the gateway changes nothing.
_HTML = _PAGE.format(assets="docs/assets", document="openapi.json")


def docs_page(request: Request) -> Response:
    return Response(_HTML, content_type="text/html", charset="utf-8")


def includeme(config: Configurator) -> None:
    config.add_static_view(name=ASSETS, path="swagger_ui:static", permission=NO_PERMISSION_REQUIRED)
    config.add_route("api.moodle.docs", DOCS_PATH)
    config.add_view(docs_page, route_name="api.moodle.docs", request_method="GET", permission=NO_PERMISSION_REQUIRED)
