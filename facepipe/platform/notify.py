"""Webhooks: POST a digest's JSON summary to each configured URL, with retries, never raising.

A receiver that is down or answers 5xx is retried with exponential backoff (urllib3's Retry,
POST included: a summary posted twice is harmless, the receiver can dedupe by run_id); a
webhook that still fails is reported to the caller's log, and the other webhooks are still called.
"""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10
RETRIES = 3
BACKOFF_FACTOR = 0.5  # waits 0.5 s, 1 s, 2 s between the attempts

# urllib3 logs each retry with the request's path, which for a Slack-style webhook is its secret;
# our own messages (below) say what failed without it.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _session() -> "requests.Session":
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=RETRIES,
        connect=RETRIES,
        read=RETRIES,
        status=RETRIES,
        backoff_factor=BACKOFF_FACTOR,
        status_forcelist=[500, 502, 503, 504],
        allowed_methods=frozenset({"POST"}),
        raise_on_status=False,  # the last 5xx response comes back, and is reported below
        respect_retry_after_header=True,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def webhook_payload(summary: Mapping[str, Any], event: str, watch: str | None) -> dict[str, Any]:
    """A webhook's JSON: what happened (digest_completed, digest_failed), the digest's summary
    (facepipe.platform.history), and the watch that launched it, if one did."""
    return {"event": event, **summary, "watch": watch}


def post_summary(urls: list[str], payload: Mapping[str, Any], log: logging.Logger | None = None) -> dict[str, str]:
    """POST `payload` as JSON to every URL; return each URL's outcome ("ok 200", or the error)."""
    import requests

    log = log or logging.getLogger(__name__)
    outcomes = {}
    with _session() as session:
        for url in urls:
            try:
                response = session.post(url, json=payload, timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS))
                if response.ok:
                    outcomes[url] = f"ok {response.status_code}"
                else:
                    outcomes[url] = f"HTTP {response.status_code}"
                    log.warning(
                        f"webhook {_redacted(url)} answered HTTP {response.status_code} for run {payload.get('run_id')}"
                    )
            except requests.RequestException as err:
                outcomes[url] = f"error: {err.__class__.__name__}"
                log.warning(
                    f"webhook {_redacted(url)} failed for run {payload.get('run_id')}: "
                    f"{err.__class__.__name__}: {_without_path(str(err), url)}"
                )
    return outcomes


def _redacted(url: str) -> str:
    """A webhook URL's scheme and host only: a Slack-style URL's path is its secret."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..." if parts.path not in ("", "/") else url


def _without_path(message: str, url: str) -> str:
    from urllib.parse import urlsplit

    path = urlsplit(url).path
    return message.replace(path, "/...") if path not in ("", "/") else message
