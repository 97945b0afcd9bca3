"""Webhooks: each digest that ends, successful or failed, is POSTed to the watches file's webhooks.

The wiring over facepipe/platform/notify.py; no webhooks in the file, no sensors.

The sensors watch every run of the instance (`monitor_all_code_locations`) and keep the digests:
a run status sensor that monitors its own location's jobs skips runs without a code location, and
a `facepipe digest` that executes its run itself (no --detach) has none.
"""

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    definitions,
    run_failure_sensor,
    run_status_sensor,
)

from facepipe.domain.request import WATCH_TAG
from facepipe.domain.watching import WatchesConfig, load_watches_leniently
from facepipe.platform.history import DIGEST_JOB, digest_summary
from facepipe.platform.notify import post_summary, webhook_payload

# run status sensors look for runs that ended this often (Dagster's default is 30 s)
WEBHOOK_INTERVAL_SECONDS = 10


def notify(context: RunStatusSensorContext, config: WatchesConfig, event: str) -> dict[str, str]:
    """POST the digest's summary to every webhook; a webhook's failure is logged, never raised."""
    run = context.dagster_run
    if run.job_name != DIGEST_JOB:
        return {}
    try:
        payload = webhook_payload(digest_summary(context.instance, run.run_id), event, run.tags.get(WATCH_TAG))
        outcomes = post_summary(config.webhook_urls(), payload, context.log)
    except Exception as err:  # a notification must never fail the sensor, nor block the next runs'
        context.log.error(f"webhooks for run {context.dagster_run.run_id} failed: {err.__class__.__name__}: {err}")
        return {}
    context.log.info(f"webhooks for {event} of run {context.dagster_run.run_id}: {list(outcomes.values())}")
    return outcomes


def build_webhook_sensors(config: WatchesConfig) -> list[SensorDefinition]:
    """On digest success and failure, the summary to each webhook; no webhooks, no sensors."""
    if not config.webhooks:
        return []

    @run_status_sensor(
        name="digest_succeeded_webhooks",
        run_status=DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=True,
        minimum_interval_seconds=WEBHOOK_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="POSTs each completed digest's summary to the webhooks.",
    )
    def digest_succeeded_webhooks(context: RunStatusSensorContext) -> None:
        notify(context, config, "digest_completed")

    @run_failure_sensor(
        name="digest_failed_webhooks",
        monitor_all_code_locations=True,
        minimum_interval_seconds=WEBHOOK_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="POSTs each failed digest's summary, with its errors, to the webhooks.",
    )
    def digest_failed_webhooks(context: RunFailureSensorContext) -> None:
        notify(context, config, "digest_failed")

    return [digest_succeeded_webhooks, digest_failed_webhooks]


@definitions
def webhook_sensors() -> Definitions:
    return Definitions(sensors=build_webhook_sensors(load_watches_leniently()[0]))
