"""`/health`: "ok" or "degraded" for anyone, each check for a client with the key. Answered from a
check made at most every HEALTH_CACHE_SECONDS, that opens no file of the embedded store."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from facepipe import settings
from facepipe.api.dependencies import AppServices, Services, key_header, key_is_right
from facepipe.api.schemas import Health
from facepipe.clients.local import daemon_is_running
from facepipe.engine.profiles import PROFILES
from facepipe.engine.weights import ATTRIBUTE_WEIGHTS, weights_folder
from facepipe.store import MIN_FREE_BYTES, free_bytes, open_store_from_settings

router = APIRouter(tags=["health"])

HEALTH_CACHE_SECONDS = 5.0


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "Degraded: the store or the instance is down."}},
)
def get_health(app_services: AppServices, given: Annotated[str | None, Depends(key_header)]) -> JSONResponse:
    """ "ok" or "degraded" (503): the store and the instance are up. With the API key (when the
    server has one): each check, the store, the instance (and its daemon) and the models. Checked
    at most every HEALTH_CACHE_SECONDS, without opening the store: answered from memory meanwhile."""
    with app_services.health_made:
        checked = app_services.health
        if checked is None or time.monotonic() - checked[0] > HEALTH_CACHE_SECONDS:
            checked = app_services.health = (time.monotonic(), health_checks(app_services))
    checks = checked[1]
    answer = checks if key_is_right(given) else {"status": checks["status"]}
    return JSONResponse(answer, status_code=200 if checks["status"] == "ok" else 503)


def store_check() -> dict[str, Any]:
    if settings.qdrant_url():  # a server: asked once per check
        try:
            with open_store_from_settings():
                pass
            return {"up": True, "kind": "server"}
        except Exception as err:
            return {"up": False, "kind": "server", "error": str(err)}
    # embedded: its folder and its disk's room, no file of it opened (a digest may hold it)
    root = settings.qdrant_path()
    free = free_bytes(root)
    if free is not None and free < MIN_FREE_BYTES:
        error = f"{free / 2**20:.1f} MiB free on the disk of {root}, under the {MIN_FREE_BYTES // 2**20} MiB needed"
        return {"up": False, "kind": "embedded", "error": error}
    return {"up": True, "kind": "embedded", "path": str(root), "exists": root.is_dir()}


def health_checks(app_services: Services) -> dict[str, Any]:
    checks: dict[str, Any] = {"store": store_check()}
    try:
        checks["instance"] = {"up": True, "daemon": daemon_is_running(app_services.instance())}
    except Exception as err:
        checks["instance"] = {"up": False, "error": f"{type(err).__name__}: {err}"}
    folder = weights_folder()
    # a weight without a URL ships in a PyPI package (dlib's) and is linked on first use
    missing = {
        name: [w.file for w in spec.weights if w.url and not (folder / w.file).is_file()]
        for name, spec in PROFILES.items()
    }
    missing["deepface-attributes"] = [f for _, f in ATTRIBUTE_WEIGHTS.values() if not (folder / f).is_file()]
    checks["models"] = {name: {"up": not files, "missing": files} for name, files in missing.items()}
    up = checks["store"]["up"] and checks["instance"]["up"]
    return {"status": "ok" if up else "degraded", **checks}
