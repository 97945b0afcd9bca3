"""The HTTP service's app: create_app() makes it with its middleware (the body-size cap, CORS), its
error handlers (every error is `{"detail": ...}`), its routers under /v1 and at the seed's paths,
and its docs (Swagger UI at /docs, ReDoc at /redoc) served from files installed with the
fastapi-offline package, so they render on a machine without internet."""

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from facepipe import settings
from facepipe.api.dependencies import Services
from facepipe.api.routes import digests, faces, forget, health, people, photos, search
from facepipe.api.routes.photos import MAX_PHOTOS_PER_UPLOAD
from facepipe.api.uploads import base64_size
from facepipe.store import StoreDamaged, StoreNotWritable

FORM_OVERHEAD = 1 << 20  # a multipart body's other fields and boundaries, beside the photo
MAX_JSON_BYTES = 1 << 20  # a JSON body: a digest request is under 10 kB, a split's face ids a few 100 kB

VERSION_PREFIX = "/v1"
ROUTERS = [
    digests.router,
    photos.router,
    search.router,
    people.router,
    forget.router,
    faces.router,
    health.router,
]

# Swagger UI's and ReDoc's files, as the fastapi-offline package ships them
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_PATH = "/docs-assets"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BoundedBody:
    """Refuse a request body larger than it may be (a form with a photo: FACEPIPE_MAX_IMAGE_BYTES, in
    base64 or not, and the form; POST .../photos: MAX_PHOTOS_PER_UPLOAD of them; anything else:
    MAX_JSON_BYTES) before it is read: at once by its Content-Length, and else (chunked, or a length
    that lies) by counting the bytes as they arrive, stopping at the budget, so no body is ever held
    or parsed past it. Each upload is bounded again as it is read."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"")
        upload = kind.startswith((b"multipart/", b"application/x-www-form-urlencoded"))
        photos = MAX_PHOTOS_PER_UPLOAD if scope["path"].endswith("/photos") else 1
        # a photo may come in base64, a third larger; URL-encoded, each of its '+' and '/' takes 3 bytes
        escaped = 3 if kind.startswith(b"application/x-www-form-urlencoded") else 1
        budget = (
            base64_size(settings.max_image_bytes()) * photos * escaped + FORM_OVERHEAD if upload else MAX_JSON_BYTES
        )
        what = (
            f"an upload of {photos} photo{'s' if photos > 1 else ''} (FACEPIPE_MAX_IMAGE_BYTES each)"
            if upload
            else "a request that is not a photo upload"
        )

        def refused(size: str = "") -> str:
            return f"refused: the request is {size}more than the {budget:,} bytes {what} may take"

        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > budget:
            await JSONResponse({"detail": refused(f"{int(length):,} bytes, ")}, status_code=413)(scope, receive, send)
            return None
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > budget:  # FastAPI answers an HTTPException raised while it reads the body
                raise HTTPException(413, refused())
            return message

        return await self.app(scope, counted, send)


async def bad_request(request: Request, err: Exception) -> JSONResponse:
    """422 naming each bad field, in a sentence (no pydantic internals)."""
    assert isinstance(err, RequestValidationError)
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {"loc": list(e["loc"]), "msg": str(e["msg"]).removeprefix("Value error, "), "type": e["type"]}
                for e in err.errors()
            ]
        },
    )


async def damaged_store(request: Request, err: Exception) -> JSONResponse:
    """A damaged face store: 500 with the message that names it and what to do, never an empty answer."""
    return JSONResponse(status_code=500, content={"detail": str(err)})


async def unwritable_store(request: Request, err: Exception) -> JSONResponse:
    """A face store on a full or read-only disk: 503 with the message that names it and what to do."""
    return JSONResponse(status_code=503, content={"detail": str(err)})


def add_docs(app: FastAPI) -> None:
    """/docs and /redoc, their scripts and styles served by the app itself (FastAPI's "self-hosting
    JavaScript and CSS for docs")."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    def assets(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + DOCS_ASSETS_PATH

    def openapi_url(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + str(app.openapi_url)

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets(request)}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets(request)}/swagger-ui.css",
            swagger_favicon_url=f"{assets(request)}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets(request)}/redoc.standalone.js",
            redoc_favicon_url=f"{assets(request)}/favicon.png",
            with_google_fonts=False,
        )


def create_app() -> FastAPI:
    """The HTTP service; what it keeps between requests (the store's lease, the Dagster instance, the
    search workers) is its own, made on first use from the settings and let go at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.services.close()

    app = FastAPI(
        title="facepipe",
        version="1",
        summary="Digest photo collections into searchable, clustered faces; search them with a selfie.",
        description=(
            "Digests are Dagster runs on the instance's run queue; faces and people live in the face store. "
            f"Every path is under {VERSION_PREFIX}; the seed service's paths (without it) answer the same. "
            'Every error is `{"detail": ...}`: a sentence, or for a 422 one entry per bad field.'
        ),
        # an operation's id is its function's name (post_digest, get_people): a generated client's method names
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # a photo in image_base64, URL-encoded at worst: refused past the byte budget once decoded
        form_limits={"max_part_size": 3 * base64_size(settings.max_image_bytes())},
    )
    app.state.services = Services()
    app.add_middleware(BoundedBody)
    origins = settings.cors_origins()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
        )
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(StoreDamaged, damaged_store)
    app.add_exception_handler(StoreNotWritable, unwritable_store)
    for router in ROUTERS:
        app.include_router(router, prefix=VERSION_PREFIX)
        app.include_router(router, include_in_schema=False)  # the seed's paths, for its clients
    add_docs(app)
    return app
