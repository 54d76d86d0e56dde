"""Swagger UI and ReDoc served from the service itself, so the docs work without internet access.

The assets (Swagger UI 5, ReDoc 2, FastAPI's favicon) come from the `fastapi-standalone-docs`
package; the pages are FastAPI's own. The app must be built with `docs_url=None, redoc_url=None`.
"""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PACKAGE = "fastapi_standalone_docs"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = f"{DOCS_URL}/static"


def mount(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect page, /redoc and the assets they load to `app`."""
    openapi_url = app.openapi_url
    redirect_url = app.swagger_ui_oauth2_redirect_url
    assert openapi_url and redirect_url, "the docs need the OpenAPI schema and a redirect URL"
    # None turns off Swagger UI's badge, which sends the schema URL to validator.swagger.io.
    swagger_parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/fastapi/favicon.png",
            oauth2_redirect_url=f"{root}{redirect_url}",
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=swagger_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        """Where an OAuth2 provider sends the browser back to Swagger UI."""
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc."""
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/fastapi/favicon.png",
            with_google_fonts=False,
        )

    app.mount(STATIC_URL, StaticFiles(packages=[(ASSETS_PACKAGE, "static")]), name="docs-static")
    # The package's ReDoc bundle loads its sidebar logo from <page URL>/logo-mini.svg (upstream
    # loads it from a CDN), so that directory is also served under the page's own path.
    app.mount(
        REDOC_URL,
        StaticFiles(packages=[(ASSETS_PACKAGE, "static/redoc")]),
        name="redoc-static",
    )
