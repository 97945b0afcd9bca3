"""The HTTP service (`facepipe serve`): the seed system's API, as a thin layer over facepipe.

Every digest is a Dagster run submitted to the instance's run queue (the daemon of `facepipe ui`
or of the deployment executes it; this process never runs one), every status is read from
Dagster's run storage and event log, every search and person from the face store.

- app.py: create_app(), its middleware, error handlers and docs; routes/: one router per concern;
  dependencies.py: what routes are given (the key check, the store, the instance, the search
  workers); schemas.py: every body and answer; uploads.py: a photo's bytes, pixels and faces.

Many clients share this process (README, "Many clients at once"):
- the embedded face store admits one process at a time: this one keeps it open between requests
  (store.StoreLease), one store operation at a time, and hands it over as soon as a digest step or
  `facepipe search` waits for it; a request waits for it up to FACEPIPE_STORE_WAIT_SECONDS, then
  answers 503 with Retry-After. No request holds it while a model runs;
- a search's selfie is embedded in a pool of worker processes (FACEPIPE_SEARCH_WORKERS; dlib's
  models are not thread-safe), at most FACEPIPE_SEARCH_QUEUE searches at once, one more is a 503;
- the other one-photo endpoints run the models in this process, holding MODEL_LOCK;
- `/health` is answered from a check made at most every HEALTH_CACHE_SECONDS, that opens no store file.
"""


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    from facepipe.api.app import create_app

    # one process: the embedded store admits one (held by its StoreLease); searches' models run in
    # its pool of worker processes
    uvicorn.run(create_app(), host=host, port=port, workers=1)
