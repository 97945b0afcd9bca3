"""The digest as assets, partitioned by group: image_list -> faces -> embeddings -> stored_faces.

One run digests one group. Inside it, the listed photos fan out in chunks to parallel steps
(the multiprocess executor runs one step per worker process), and each chunk's faces are written
as soon as it finishes, one writer at a time:

    list_images ──chunks──> extract_faces_in_chunk ──> store_chunk (x N) ──collect──> store_faces
    [image_list]                                                [faces, embeddings, stored_faces, checks]

Writing per chunk bounds the writer's memory to one chunk's results (~2.6 KB a photo unpickled:
a single store step at the end held all of them, ~2.6 GB for a million photos) and keeps what a
canceled or failed digest finished. A re-run writes the same point ids (derived from the group,
the photo's path and bytes and the face's index), so nothing is stored twice.

Detection and embedding run in the same step: the aligned chips are cut from the full-size photo
while it is decoded in memory, and shipping them to another step would cost a step start and
~67 KB of pickle per face. Only the store steps open the face store, in a pool of size 1.
The four assets are still a chain in the lineage (AssetsDefinition.from_graph's internal deps).
"""

import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetObservation,
    AssetsDefinition,
    DagsterEventType,
    DynamicOut,
    DynamicOutput,
    Failure,
    GraphOut,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    graph,
    op,
)
from dagster._core.definitions.metadata import RawMetadataValue
from dagster_aws.s3 import S3Resource

from facepipe.defs.digest.config import DigestConfig
from facepipe.defs.partitions import digest_groups
from facepipe.defs.resources import FaceStoreResource, s3_client
from facepipe.domain.request import DigestRequest, RunRefused, S3Prefix, default_workers, request_of_run, run_tags
from facepipe.engine.listing import DELETED_FROM_GROUP, Listing, NotListed, read_listed_image
from facepipe.engine.planning import ImageTask, plan_images, split_into_chunks
from facepipe.engine.profiles import PROFILES
from facepipe.engine.results import ChunkResult, ImageResult
from facepipe.engine.sources import S3Reader, SourceError
from facepipe.settings import STORE_POOL, store_queue
from facepipe.store import FaceStore, Where, faces_collection, stored_path

MAX_ERRORS_IN_METADATA = 1000

# On Celery (FACEPIPE_CELERY_BROKER), the steps that open the store are sent to the store's queue: with
# the embedded store, only the workers on the machine that holds it serve it, so the faces land in
# one store; with a Qdrant server, any worker. (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG, written
# out: the definitions load without the `celery` extra.)
STORE_STEP_TAGS = {"dagster-celery/queue": store_queue()}
# A chunk's faces are stored before another chunk starts, whatever the workers: what a canceled
# digest finished is kept. (Dagster's executors start the ready step of highest priority first.)
STORED_FIRST = {**STORE_STEP_TAGS, "dagster/priority": "1"}


@dataclass
class ImageList:
    """The image_list asset: what a digest found at its source and what it will do."""

    group_id: str
    profile: str
    source: str
    listed: int
    skipped: int  # unchanged since the group's last digest
    tasks: list[ImageTask]  # one per photo to digest


@dataclass
class Chunk:
    tasks: list[ImageTask]
    request: DigestRequest  # the digest's settings: profile, confidence, source...
    images_to_digest: int = 0  # in the whole digest, for its running total


def _workers(context: OpExecutionContext) -> int:
    execution = cast(dict[str, Any], context.run_config.get("execution") or {})
    return execution.get("config", {}).get("workers") or default_workers()


class FailedPhoto(TypedDict):
    path: str
    error: str


def _errors(images: list[ImageResult]) -> list[FailedPhoto]:
    return [{"path": stored_path(r.path), "error": r.error} for r in images if r.error]


def _request(context: OpExecutionContext) -> DigestRequest:
    """The run's request: its config and its partition (the group), or one line that says what is wrong."""
    try:
        return request_of_run(context.op_config, context.partition_key if context.has_partition_key else None)
    except RunRefused as err:
        raise Failure(str(err), allow_retries=False) from None


# The Launchpad's form is DigestConfig's schema (the source and profile as choices, refused before
# launch); what only the values can tell (a confidence of 1.5, a partition 'a/b') fails the run in
# facepipe's run launcher before its process starts, and here for a run executed in process.
@op(
    out={"image_list": Out(), "chunks": DynamicOut()},
    pool=STORE_POOL,
    tags=STORE_STEP_TAGS,
    config_schema=DigestConfig.to_fields_dict(),
)
def list_images(
    context: OpExecutionContext, face_store: FaceStoreResource, s3: S3Resource
) -> Iterator[Output[ImageList] | DynamicOutput[Chunk]]:
    """List the source's photos and leave out those the group already has unchanged."""
    request = _request(context)
    workers = _workers(context)
    # a digest launched from the Launchpad is a digest like any other: tagged as the CLI tags its own
    context.instance.add_run_tags(context.run_id, run_tags(request, workers))
    try:
        listing = request.list_photos(s3_client(s3, request))
    except OSError as err:
        raise Failure(f"source: cannot list {request.source.url!r}: {err}", allow_retries=False) from err
    except SourceError as err:  # no such bucket, bad credentials: nothing can work
        raise Failure(str(err), allow_retries=False) from err
    files = request.modified_in_window(listing)
    faces_lost: list[str] = []
    deleted: list[str] = []
    with face_store.open() as store:
        digested = store.digested_images(
            request.group_id, request.profile, [f.path for f in files], faces_lost, deleted
        )
        if faces_lost:  # what is left of their faces goes: they are digested whole again
            store.delete_faces_of_images(request.group_id, request.profile, faces_lost)
    if deleted:  # photos a user deleted from the group stay out of it
        gone = set(deleted)
        files = [f for f in files if f.path not in gone]
        listing.not_listed += [NotListed(path, DELETED_FROM_GROUP) for path in deleted]
    not_listed = _not_listed(context, listing)
    if faces_lost:  # never skipped as unchanged: digested again, and said
        context.log.warning(
            f"{len(faces_lost)} photos the group's ledger records as digested have lost their faces in the "
            f"face store ({face_store.describe()}), first {stored_path(faces_lost[0])}: the store may be "
            "damaged; they are digested again"
        )
    tasks, skipped = plan_images(files, digested, request.redigest)
    chunks = split_into_chunks(tasks, workers, request.chunk_size)

    image_list = ImageList(request.group_id, request.profile, request.source.url, len(files), skipped, tasks)
    yield Output(
        image_list,
        "image_list",
        metadata={
            "source": request.source.url,
            "profile": request.profile,
            "min_face_size": request.face_size,
            "images_listed": len(files),
            "images_to_digest": len(tasks),
            "images_skipped": skipped,
            "images_with_faces_lost": len(faces_lost),
            "chunks": len(chunks),
            **not_listed,
        },
    )
    for index, chunk_tasks in enumerate(chunks):
        chunk = Chunk(chunk_tasks, request, len(tasks))
        yield DynamicOutput(chunk, mapping_key=f"chunk_{index:04d}", output_name="chunks")


def _not_listed(context: OpExecutionContext, listing: Listing) -> dict[str, RawMetadataValue]:
    """The entries the listing left out (links, unreadable folders...): logged, counted and shown
    in image_list's metadata, like failed photos."""
    entries = [{"path": stored_path(n.path), "reason": n.reason} for n in listing.not_listed]
    for entry in entries[:MAX_ERRORS_IN_METADATA]:
        context.log.warning(f"not listed: {entry['path']}: {entry['reason']}")
    return {"entries_not_listed": len(entries), "not_listed": MetadataValue.json(entries[:MAX_ERRORS_IN_METADATA])}


# A chunk reports the photos it has done this often, so that a digest's progress moves while its
# chunks run (each report counts only the photos since the last: the history sums them)
PROGRESS_SECONDS = 5.0


def _observe(
    context: OpExecutionContext, chunk: Chunk, images: list[ImageResult], **metadata: RawMetadataValue
) -> None:
    """An observation of `faces`: the counts of `images`, photos done since the chunk's last one,
    with the digest's running total over all its chunks (on the run page and the asset page)."""
    done, faces = _digest_so_far(context)
    done, faces = done + len(images), faces + sum(len(r.faces) for r in images)
    context.log.info(f"digest: {done} of {chunk.images_to_digest} photos done, {faces} faces found so far")
    context.log_event(
        AssetObservation(
            asset_key=AssetKey("faces"),
            partition=context.partition_key if context.has_partition_key else None,
            metadata={
                "images_done": len(images),
                "images_failed": sum(1 for r in images if r.error),
                "faces_detected": sum(r.faces_detected for r in images),
                "faces_dropped": sum(r.faces_dropped for r in images),
                "faces_too_small": sum(r.faces_too_small for r in images),
                "failed_images": MetadataValue.json(_errors(images)[:MAX_ERRORS_IN_METADATA]),
                "digest_images_done": done,
                "digest_images_to_digest": chunk.images_to_digest,
                "digest_faces_found": faces,
                **metadata,
            },
        )
    )


def _digest_so_far(context: OpExecutionContext) -> tuple[int, int]:
    """Photos done and faces found by the run's chunks so far, from their observations."""
    done = faces = 0
    records = context.instance.get_records_for_run(context.run_id, of_type=DagsterEventType.ASSET_OBSERVATION)
    for record in records.records:
        event = record.event_log_entry.dagster_event
        assert event is not None  # the records asked for are all Dagster events
        metadata = event.asset_observation_data.asset_observation.metadata
        if "digest_images_done" in metadata:
            done += cast(int, metadata["images_done"].value)
            faces += cast(int, metadata["faces_detected"].value) - cast(int, metadata["faces_dropped"].value)
            faces -= cast(int, metadata["faces_too_small"].value)
    return done, faces


@op
def extract_faces_in_chunk(context: OpExecutionContext, chunk: Chunk, s3: S3Resource) -> ChunkResult:
    """Decode, detect, align and embed one chunk of photos; report progress as observations."""
    # the models load here, in the step's process: the definitions import no model library
    from facepipe.engine.faces import faces_in_chunk

    request = chunk.request
    read = S3Reader(s3_client(s3, request)) if isinstance(request.source, S3Prefix) else read_listed_image
    reported, last_report = 0, time.monotonic()

    def report_progress(done: list[ImageResult]) -> None:
        nonlocal reported, last_report
        if time.monotonic() - last_report >= PROGRESS_SECONDS and len(done) < len(chunk.tasks):
            _observe(context, chunk, done[reported:])
            reported, last_report = len(done), time.monotonic()

    result = faces_in_chunk(
        chunk.tasks,
        request.profile,
        request.confidence,
        request.face_size,
        request.redigest,
        read=read,
        on_photo=report_progress,
        # chunks run side by side in the run's worker processes, which share this machine's cores
        processes=_workers(context),
    )
    for error in _errors(result.images):
        context.log.warning(f"image failed: {error['path']}: {error['error']}")
    _observe(
        context,
        chunk,
        result.images[reported:],
        # for benchmarks/digest_speed.py: where a chunk's time went, and the worker's memory
        seconds_per_stage=MetadataValue.json({k: round(v, 3) for k, v in result.seconds.items()}),
        worker_pid=os.getpid(),
        worker_peak_rss_mb=_peak_rss_mb(),
    )
    return result


def _peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


@dataclass
class StoredChunk:
    """What store_chunk wrote of one chunk, and the chunk's counts for the digest's totals."""

    images_done: int
    images_unchanged: int
    faces_detected: int
    faces_dropped: int
    faces_too_small: int
    faces_embedded: int
    faces_stored: int
    faces_replaced: int
    errors: list[FailedPhoto]
    seconds: dict[str, float]  # per stage, summed over the chunk's photos


@op(pool=STORE_POOL, tags=STORED_FIRST)
def store_chunk(
    context: OpExecutionContext, chunk: Chunk, chunk_result: ChunkResult, face_store: FaceStoreResource
) -> StoredChunk:
    """Write one chunk's faces and ledger rows as soon as the chunk is done (one writer at a time)."""
    images = chunk_result.images
    counts = None
    if images:
        request = chunk.request
        with face_store.open() as store:
            counts = store.write_images(request.group_id, request.profile, images, context.run_id)
    return StoredChunk(
        images_done=len(images),
        images_unchanged=sum(1 for r in images if r.unchanged),
        faces_detected=sum(r.faces_detected for r in images),
        faces_dropped=sum(r.faces_dropped for r in images),
        faces_too_small=sum(r.faces_too_small for r in images),
        faces_embedded=sum(len(r.faces) for r in images),
        faces_stored=counts.faces_stored if counts else 0,
        faces_replaced=counts.faces_replaced if counts else 0,
        errors=_errors(images),
        seconds=dict(chunk_result.seconds),
    )


# A digest where more than this share of the photos failed is worth a look (a warning on `faces`)
FAILED_SHARE_WARNING = 0.05

# Partitioned as their assets are: the UI shows each group's latest result, not whichever group's
# digest ran last (Dagster's partitioned asset checks, a preview in 1.13).
CHECKS = [
    AssetCheckSpec(
        "complete",
        asset="stored_faces",
        partitions_def=digest_groups,
        description="Every photo the listing planned was digested or recorded as failed.",
    ),
    AssetCheckSpec(
        "few_failed_photos",
        asset="faces",
        partitions_def=digest_groups,
        description=f"At most {FAILED_SHARE_WARNING:.0%} of the digested photos failed (a warning).",
    ),
    AssetCheckSpec(
        "sound_vectors",
        asset="embeddings",
        partitions_def=digest_groups,
        description="Every face stored by the digest has a finite unit vector of the profile's "
        "dimension and a box inside its photo.",
    ),
    AssetCheckSpec(
        "count_matches_ledger",
        asset="stored_faces",
        partitions_def=digest_groups,
        description="The faces the digest stored are as many as its ledger rows say its photos have.",
    ),
]


def unsound_faces(store: FaceStore, group_id: str, profile: str, run_id: str) -> list[dict[str, Any]]:
    """The `sound_vectors` check's rule: the faces a digest run stored whose vector is not a finite
    unit vector of the profile's dimension, or whose box is not inside its photo; each with its id,
    photo and problem."""
    import numpy as np

    dimension, unsound = PROFILES[profile].dimension, []
    keys = ("image_path", "facial_area", "image_width", "image_height")
    for face in store.scroll_faces(group_id, profile, Where({"run_id": run_id}), with_vectors=True, payload_keys=keys):
        vector = np.asarray(face.vector or [], np.float64)
        area, width, height = face.payload["facial_area"], face.payload["image_width"], face.payload["image_height"]
        if vector.shape != (dimension,) or not np.isfinite(vector).all():
            problem = f"vector of {vector.size} values, not {dimension} finite ones"
        elif abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
            problem = f"vector of length {float(np.linalg.norm(vector)):.4f}, not 1"
        elif not (
            0 <= area["x"]
            and 0 <= area["y"]
            and area["w"] > 0
            and area["h"] > 0
            and area["x"] + area["w"] <= width
            and area["y"] + area["h"] <= height
        ):
            problem = f"box {area} outside the {width} x {height} photo"
        else:
            continue
        unsound.append({"face_id": face.id, "image_path": face.payload["image_path"], "problem": problem})
    return unsound


@op(
    # the totals are the materializations' metadata; nothing reads them as values, so nothing is
    # pickled (the IO manager's `path` would point at a pickle of counts, not at the faces)
    out={
        "faces": Out(Nothing),
        "embeddings": Out(Nothing),
        "stored_faces": Out(Nothing),
        **{spec.get_python_identifier(): Out() for spec in CHECKS},
    },
    pool=STORE_POOL,
    tags=STORE_STEP_TAGS,
)
def store_faces(
    context: OpExecutionContext, image_list: ImageList, stored_chunks: list[StoredChunk], face_store: FaceStoreResource
) -> Iterator[Output[None] | AssetCheckResult]:
    """Index what the chunks wrote, write the digest's totals to the event log, and check them.

    A digest that did not digest every planned photo (a re-execution from failure skips the chunks
    that never started) fails here, so that it never ends green."""
    errors = [error for chunk in stored_chunks for error in chunk.errors]
    seconds: dict[str, float] = {}
    for chunk in stored_chunks:
        for stage, value in chunk.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    planned, done = len(image_list.tasks), sum(c.images_done for c in stored_chunks)
    faces = {
        "images_listed": image_list.listed,
        "images_skipped": image_list.skipped,
        "images_to_digest": planned,
        "images_done": done,
        "images_failed": len(errors),
        "images_unchanged": sum(c.images_unchanged for c in stored_chunks),
        "faces_detected": sum(c.faces_detected for c in stored_chunks),
        "faces_dropped": sum(c.faces_dropped for c in stored_chunks),
        "faces_too_small": sum(c.faces_too_small for c in stored_chunks),
    }
    spec = PROFILES[image_list.profile]
    embeddings: dict[str, RawMetadataValue] = {
        "faces_embedded": sum(c.faces_embedded for c in stored_chunks),
        "model": spec.model_name,
        "dimension": spec.dimension,
        "embed_seconds": round(seconds.get("embed", 0.0), 2),
    }
    with face_store.open() as store:
        totals = store.finish_digest(image_list.group_id, image_list.profile, context.run_id)
        unsound = unsound_faces(store, image_list.group_id, image_list.profile, context.run_id)
    stored = {
        "faces_stored": sum(c.faces_stored for c in stored_chunks),
        "faces_replaced": sum(c.faces_replaced for c in stored_chunks),
        "faces_in_group": totals.faces_in_group,
    }
    yield Output(
        None,
        "faces",
        metadata={
            **faces,
            "failed_images": MetadataValue.json(errors[:MAX_ERRORS_IN_METADATA]),
            "seconds_per_stage": MetadataValue.json({k: round(v, 2) for k, v in seconds.items()}),
        },
    )
    yield Output(None, "embeddings", metadata=embeddings)
    yield Output(
        None,
        "stored_faces",
        metadata={
            **stored,
            "profile": image_list.profile,
            "store": face_store.describe(),
            "collection": faces_collection(image_list.profile),
            "store_peak_rss_mb": _peak_rss_mb(),
        },
    )
    context.log.info("digest of %s: %s", image_list.source, json.dumps({**faces, **embeddings, **stored}))

    missing = planned - done
    finish = (
        "finish it with `facepipe digests retry RUN_ID`, or re-execute the whole run (Re-execute > All steps): "
        "photos already stored are not digested again"
    )
    yield AssetCheckResult(
        check_name="complete",
        asset_key="stored_faces",
        passed=missing == 0,
        metadata={"images_to_digest": planned, "images_done": done, "images_missing": missing},
        description=f"{missing} of {planned} photos were not digested: {finish}" if missing else None,
    )
    failed_share = len(errors) / done if done else 0.0
    yield AssetCheckResult(
        check_name="few_failed_photos",
        asset_key="faces",
        severity=AssetCheckSeverity.WARN,
        passed=failed_share <= FAILED_SHARE_WARNING,
        metadata={"failed_share": round(failed_share, 4), "first_failures": MetadataValue.json(errors[:5])},
        description=f"{len(errors)} of {done} photos failed, first: "
        + "; ".join(f"{e['path']}: {e['error']}" for e in errors[:3])
        if errors
        else None,
    )
    yield AssetCheckResult(
        check_name="sound_vectors",
        asset_key="embeddings",
        passed=not unsound,
        metadata={"faces_unsound": len(unsound), "first": MetadataValue.json(unsound[:5])},
    )
    yield AssetCheckResult(
        check_name="count_matches_ledger",
        asset_key="stored_faces",
        passed=totals.faces_of_run == totals.faces_in_ledger_of_run,
        metadata={"faces_in_store": totals.faces_of_run, "faces_in_ledger": totals.faces_in_ledger_of_run},
    )
    if missing:
        raise Failure(
            f"{missing} of {planned} photos were not digested (their chunks did not run): {finish}", allow_retries=False
        )


@graph(
    name="digest",
    out={
        "image_list": GraphOut(),
        "faces": GraphOut(),
        "embeddings": GraphOut(),
        "stored_faces": GraphOut(),
        **{spec.get_python_identifier(): GraphOut() for spec in CHECKS},
    },
)
def digest_graph() -> dict[str, Any]:
    image_list, chunks = list_images()
    stored_chunks = chunks.map(lambda chunk: store_chunk(chunk, extract_faces_in_chunk(chunk)))
    faces, embeddings, stored_faces, *checks = store_faces(image_list, stored_chunks.collect())
    return {
        "image_list": image_list,
        "faces": faces,
        "embeddings": embeddings,
        "stored_faces": stored_faces,
        **dict(zip((spec.get_python_identifier() for spec in CHECKS), checks)),
    }


# The four stages, a chain in the lineage (one run writes them all; detection and embedding share
# a step per chunk, see the module's docstring)
digest = AssetsDefinition.from_graph(
    digest_graph,
    keys_by_output_name={name: AssetKey(name) for name in ("image_list", "faces", "embeddings", "stored_faces")},
    internal_asset_deps={
        "image_list": set(),
        "faces": {AssetKey("image_list")},
        "embeddings": {AssetKey("faces")},
        "stored_faces": {AssetKey("embeddings")},
    },
    descriptions_by_output_name={
        "image_list": "The photos listed at the digest's source, less those already digested.",
        "faces": "Faces detected and aligned, counted per digest (dropped below the confidence, too small).",
        "embeddings": "The faces' embeddings: how many, by which model, of which dimension.",
        "stored_faces": "The group's faces in the Qdrant face store (the faces_<profile> collection).",
    },
    partitions_def=digest_groups,
    check_specs=CHECKS,
)
