"""Digests on a remote Dagster webserver, over its GraphQL API: launch, list, show, cancel.

Submitting and terminating use dagster-graphql's client; the reads (runs, their events) and adding
a group's partition are GraphQL queries the client has no method for.
"""

import json
from datetime import datetime
from urllib.parse import urlparse

import requests
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from facepipe.clients.digests import DigestsClient, LaunchError, OnProgress, Summary
from facepipe.defs.digest.jobs import digest_run_config
from facepipe.defs.partitions import GROUPS
from facepipe.domain.request import DigestRequest, run_tags
from facepipe.platform.history import (
    DIGEST_JOB,
    DigestNotFound,
    group_tags,
    kept_summary_parts,
    statuses_named,
    summarise,
)

_METADATA = """metadataEntries { label __typename
  ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
  ... on JsonMetadataEntry { jsonString } ... on TextMetadataEntry { text } ... on BoolMetadataEntry { boolValue } }"""

RUN_QUERY = """query Digest($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId jobName status startTime endTime tags { key value } }
  }
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection { events { __typename
      ... on MaterializationEvent { assetKey { path } METADATA }
      ... on ObservationEvent { assetKey { path } METADATA }
      ... on ExecutionStepFailureEvent { stepKey error { message cause { message } } failureMetadata { description } }
      ... on RunFailureEvent { message } } }
  }
}""".replace("METADATA", _METADATA)

RUNS_QUERY = """query Digests($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename ... on Runs { results { runId status startTime endTime tags { key value } } }
    ... on PythonError { message } }
}"""

REPOSITORIES_QUERY = """{ repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } jobs { name } } } } }"""

ADD_PARTITION = """mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message }
  }
}"""


def _metadata(entries: list[dict]) -> dict:
    values = {}
    for entry in entries:
        if entry["__typename"] == "JsonMetadataEntry":
            values[entry["label"]] = json.loads(entry["jsonString"])
        else:
            values[entry["label"]] = next(
                (entry[k] for k in ("intValue", "floatValue", "text", "boolValue") if k in entry), None
            )
    return values


class RemoteDigests(DigestsClient):
    """The digests of the instance of a Dagster webserver at `url` (its code location facepipe's), over GraphQL."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.where = self.url
        self.client = DagsterGraphQLClient(
            parsed.hostname or "localhost", port_number=parsed.port, use_https=parsed.scheme == "https"
        )

    def _query(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL error from {self.url}: {body['errors']}")
        return body["data"]

    def _repository(self) -> dict:
        data = self._query(REPOSITORIES_QUERY)["repositoriesOrError"]
        for repo in data.get("nodes", []):
            if any(job["name"] == DIGEST_JOB for job in repo["jobs"]):
                return {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}
        raise LaunchError(f"no code location at {self.url} has the digest_job: is it a `facepipe ui`?")

    def start_digest(self, request: DigestRequest, workers: int) -> str:
        """Submit a digest to the webserver's instance (its run queue) and return the run id."""
        repository = self._repository()
        added = self._query(ADD_PARTITION, {"selector": repository, "name": GROUPS, "key": request.group_id})
        result = added["addDynamicPartition"]
        if result["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise LaunchError(
                f"could not add group {request.group_id!r} at {self.url}: {result.get('message', result)}"
            )
        return self.client.submit_job_execution(
            DIGEST_JOB,
            repository_location_name=repository["repositoryLocationName"],
            repository_name=repository["repositoryName"],
            run_config=digest_run_config(request, workers),
            tags=run_tags(request, workers),
        )

    def digest_summary(self, run_id: str) -> Summary:
        data = self._query(RUN_QUERY, {"runId": run_id})
        run = data["runOrError"]
        if run["__typename"] != "Run" or run["jobName"] != DIGEST_JOB:
            raise DigestNotFound(f"no digest with run id {run_id!r} at {self.url}")
        materialized, observations, errors = {}, [], []
        for event in data["logsForRun"].get("events", []):
            kind = event["__typename"]
            if kind == "MaterializationEvent":
                materialized["/".join(event["assetKey"]["path"])] = _metadata(event["metadataEntries"])
            elif kind == "ObservationEvent":
                observations.append(_metadata(event["metadataEntries"]))
            elif kind == "ExecutionStepFailureEvent":
                # a Failure's description, as facepipe wrote it; else the user's exception, the cause
                # of Dagster's wrapper
                described = (event.get("failureMetadata") or {}).get("description")
                error = event["error"]["cause"] or event["error"]
                errors.append(f"{event['stepKey']}: {(described or error['message']).strip()}")
            elif kind == "RunFailureEvent":
                errors.append(event["message"])
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        return summarise(
            run_id,
            DagsterRunStatus(run["status"]),
            tags,
            run["startTime"],
            run["endTime"],
            materialized,
            observations,
            errors,
        )

    def list_digests(
        self,
        group_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
    ) -> list[Summary]:
        # the filter of the local history (platform/history.py), in GraphQL's words
        runs_filter: dict = {"pipelineName": DIGEST_JOB}
        if tags := group_tags(group_id):
            runs_filter["tags"] = [{"key": key, "value": value} for key, value in tags.items()]
        if statuses := statuses_named(status):
            runs_filter["statuses"] = [s.value for s in statuses]
        if since:
            runs_filter["createdAfter"] = since.timestamp()
        if until:
            runs_filter["createdBefore"] = until.timestamp()
        runs = self._query(RUNS_QUERY, {"filter": runs_filter, "limit": limit})["runsOrError"]
        if runs["__typename"] != "Runs":
            raise RuntimeError(f"could not list runs at {self.url}: {runs.get('message', runs)}")
        return [self._listed(run) for run in runs["results"]]

    def _listed(self, run: dict) -> Summary:
        """A listed run's summary: from the summary a local reader kept in its tags (history.SUMMARY_TAG),
        else from its events."""
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        parts = kept_summary_parts(run["runId"], tags)
        if parts is None:
            return self.digest_summary(run["runId"])
        status = DagsterRunStatus(run["status"])
        return summarise(
            run["runId"],
            status,
            tags,
            run["startTime"],
            run["endTime"],
            parts["materialized"],
            parts["observations"],
            parts["errors"],
        )

    def cancel_digest(self, run_id: str) -> Summary:
        summary = self.digest_summary(run_id)  # not found is an error of its own
        if summary["status"] not in ("queued", "processing"):
            raise ValueError(f"digest {run_id} is already {summary['status']}")
        self.client.terminate_run(run_id)
        return self.digest_summary(run_id)

    def retry_digest(self, run_id: str, on_progress: OnProgress | None = None) -> Summary:
        # Dagster's own from-failure re-execution leaves out the chunks a canceled run never started;
        # the steps left to do are chosen from the run's events (local.steps_to_retry), which is
        # not written over GraphQL yet
        raise ValueError(
            f"a digest at {self.url} is retried on that server's machine: `facepipe digests retry {run_id}` there"
        )
