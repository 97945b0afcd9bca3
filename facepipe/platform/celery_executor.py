"""The digest's executor on Celery: dagster-celery's, asking the workers before it sends any step.

A run launched by `facepipe digest` is checked before it is created (facepipe/clients/local.py); one launched
from the UI, by a sensor or by a schedule is not, and on a queue no worker serves it would wait for
ever. So the run itself asks the workers first (facepipe/platform/worker_check.py) and, when they cannot run
it, fails at once with the reason: its RUN_FAILURE event carries the one-line message. Everything
else (config, queues, priorities, retries) is dagster-celery's `celery_executor`, unchanged.

Imported only with FACEPIPE_CELERY_BROKER set: dagster-celery is the `celery` extra.
"""

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from celery.exceptions import DuplicateTaskNameWarning
from dagster import (
    DagsterEvent,
    ExecutorDefinition,
    InitExecutorContext,
    executor,
    multiple_process_executor_requirements,
)
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster_celery.config import TASK_EXECUTE_PLAN_NAME
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

from facepipe.platform.worker_check import check_workers

# dagster-celery 0.29.27 registers its step task on the run's Celery app again for every step it
# sends (executor._submit_task calls tasks.create_task, a new closure under the same name), and
# Celery 5.7 warns once per app, so once per digest. The task first registered is the one used and
# the code is the same: the warning is dagster-celery's, not a real clash.
warnings.filterwarnings(
    "ignore", message=f"Task name '{TASK_EXECUTE_PLAN_NAME}' is already registered", category=DuplicateTaskNameWarning
)


class WorkerCheckingCeleryExecutor(CeleryExecutor):
    """dagster-celery's CeleryExecutor that first checks the workers can run the run."""

    def __init__(self, photos_of_run: Callable[[Mapping[str, Any]], str | None], **celery_args: Any) -> None:
        super().__init__(**celery_args)
        self.photos_of_run = photos_of_run

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        # raised before any step is sent: Dagster fails the run with this error (a RUN_FAILURE event)
        check_workers(plan_context.instance.storage_directory(), self.photos_of_run(plan_context.run_config))
        yield from super().execute(plan_context, execution_plan)


def worker_checking_celery_executor(photos_of_run: Callable[[Mapping[str, Any]], str | None]) -> ExecutorDefinition:
    """dagster-celery's `celery_executor` (the same name and config), checking the workers first;
    `photos_of_run` is the local folder a run reads, from its run config (None for S3)."""

    @executor(name="celery", config_schema=CELERY_CONFIG, requirements=multiple_process_executor_requirements())
    def celery_executor(init_context: InitExecutorContext) -> WorkerCheckingCeleryExecutor:
        config = init_context.executor_config
        return WorkerCheckingCeleryExecutor(
            photos_of_run,
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            retries=RetryMode.from_config(
                cast(Mapping[str, Mapping[str, Any]], config["retries"])
            ),  # CELERY_CONFIG's shape
        )

    return celery_executor
