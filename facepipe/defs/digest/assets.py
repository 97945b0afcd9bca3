"""The digest as assets, partitioned by group: image_list -> faces -> stored_faces.

One run digests one group. Inside it, the listed photos fan out in chunks to parallel steps
(the multiprocess executor runs one step per worker process), and each chunk's faces are written
as soon as it finishes, one writer at a time:

    list_images ──chunks──> extract_faces_in_chunk ──> store_chunk (x N) ──collect──> store_faces
    [image_list]                                                              [faces, stored_faces]

Writing per chunk bounds the writer's memory to one chunk's results (~2.6 KB a photo unpickled:
a single store step at the end held all of them, ~2.6 GB for a million photos) and keeps what a
canceled or failed digest finished. A re-run writes the same point ids (derived from the group,
the photo's bytes and the face's index), so nothing is stored twice.

Detection and embedding run in the same step: the aligned chips are cut from the full-size photo
while it is decoded in memory, and shipping them to another step would cost a step start and
~67 KB of pickle per face. Only the store steps open the face store, in a pool of size 1.
"""

import json
import os
import resource
import sys
from dataclasses import dataclass
from typing import cast

from dagster import (
    AssetKey,
    AssetObservation,
    AssetOut,
    DynamicOut,
    DynamicOutput,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Out,
    Output,
    graph_multi_asset,
    op,
)

from dagster_aws.s3 import S3Resource

from facepipe.defs.digest.config import DigestConfig
from facepipe.defs.partitions import digest_groups
from facepipe.defs.resources import FaceStoreResource, s3_client
from facepipe.engine.listing import display_path, read_listed_image
from facepipe.engine.planning import plan_images, split_into_chunks
from facepipe.engine.sources import S3Reader, SourceError
from facepipe.request import DigestRequest, default_workers
from facepipe.settings import STORE_POOL

MAX_ERRORS_IN_METADATA = 1000


@dataclass
class ImageList:
    """The image_list asset: what a digest found at its source and what it will do."""

    group_id: str
    profile: str
    source: str
    listed: int
    skipped: int  # unchanged since the group's last digest
    tasks: list  # ImageTask, one per photo to digest


@dataclass
class Chunk:
    tasks: list  # ImageTask
    request: DigestRequest  # the digest's settings: profile, confidence, source...


def _workers(context: OpExecutionContext) -> int:
    execution = cast(dict, context.run_config.get("execution") or {})
    return execution.get("config", {}).get("workers") or default_workers()


def _errors(images) -> list[dict]:
    return [{"path": r.path, "error": r.error} for r in images if r.error]


@op(out={"image_list": Out(), "chunks": DynamicOut()}, pool=STORE_POOL)
def list_images(context: OpExecutionContext, config: DigestConfig, face_store: FaceStoreResource, s3: S3Resource):
    """List the source's photos and leave out those the group already has unchanged."""
    if context.has_partition_key and context.partition_key != config.group_id:
        raise Failure(f"group_id {config.group_id!r} differs from the run's partition {context.partition_key!r}",
                      allow_retries=False)
    try:
        listing = config.list_photos(s3_client(s3, config))
    except OSError as err:
        raise Failure(f"local_dir_path: cannot list {config.local_dir_path!r}: {err}", allow_retries=False) from err
    except SourceError as err:  # no such bucket, bad credentials: nothing can work
        raise Failure(str(err), allow_retries=False) from err
    files = config.modified_in_window(listing)
    not_listed = _not_listed(context, listing)
    with face_store.open() as store:
        digested = store.digested_images(config.group_id, config.profile, paths=[f.path for f in files])
    tasks, skipped = plan_images(files, digested, config.redigest)
    chunks = split_into_chunks(tasks, _workers(context), config.chunk_size)

    image_list = ImageList(config.group_id, config.profile, config.source, len(files), skipped, tasks)
    yield Output(image_list, "image_list", metadata={
        "source": config.source, "profile": config.profile, "min_face_size": config.face_size, "images_listed": len(files),
        "images_to_digest": len(tasks), "images_skipped": skipped, "chunks": len(chunks),
        **not_listed,
    })
    for index, chunk_tasks in enumerate(chunks):
        yield DynamicOutput(Chunk(chunk_tasks, DigestRequest(**config.model_dump())), mapping_key=f"chunk_{index:04d}", output_name="chunks")


def _not_listed(context: OpExecutionContext, listing) -> dict:
    """The entries the listing left out (links, unreadable folders...): logged, counted and shown
    in image_list's metadata, like failed photos."""
    entries = [{"path": display_path(n.path), "reason": n.reason} for n in listing.not_listed]
    for entry in entries[:MAX_ERRORS_IN_METADATA]:
        context.log.warning(f"not listed: {entry['path']}: {entry['reason']}")
    return {"entries_not_listed": len(entries), "not_listed": MetadataValue.json(entries[:MAX_ERRORS_IN_METADATA])}


@op
def extract_faces_in_chunk(context: OpExecutionContext, chunk, s3: S3Resource):
    """Decode, detect, align and embed one chunk of photos; report progress as an observation."""
    # the models load here, in the step's process: the definitions import no model library
    from facepipe.engine.faces import faces_in_chunk

    request = chunk.request
    read = S3Reader(s3_client(s3, request)) if request.s3_bucket else read_listed_image
    result = faces_in_chunk(chunk.tasks, request.profile, request.confidence, request.face_size,
                            request.redigest, read=read)
    for error in _errors(result.images):
        context.log.warning(f"image failed: {error['path']}: {error['error']}")
    context.log_event(AssetObservation(
        asset_key=AssetKey("faces"),
        partition=context.partition_key if context.has_partition_key else None,
        metadata={
            "images_done": len(result.images),
            "images_failed": sum(1 for r in result.images if r.error),
            "faces_detected": sum(r.faces_detected for r in result.images),
            "faces_dropped": sum(r.faces_dropped for r in result.images),
            "faces_too_small": sum(r.faces_too_small for r in result.images),
            "failed_images": MetadataValue.json(_errors(result.images)[:MAX_ERRORS_IN_METADATA]),
            # for benchmarks/digest_speed.py: where a chunk's time went, and the worker's memory
            "seconds_per_stage": MetadataValue.json({k: round(v, 3) for k, v in result.seconds.items()}),
            "worker_pid": os.getpid(),
            "worker_peak_rss_mb": _peak_rss_mb(),
        },
    ))
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
    faces_stored: int
    faces_replaced: int
    errors: list  # {"path", "error"} of each failed photo
    seconds: dict  # per stage, summed over the chunk's photos


@op(pool=STORE_POOL)
def store_chunk(context: OpExecutionContext, chunk, chunk_result, face_store: FaceStoreResource) -> StoredChunk:
    """Write one chunk's faces and ledger rows as soon as the chunk is done (one writer at a time)."""
    images = chunk_result.images
    counts = None
    if images:
        request = chunk.request
        with face_store.open() as store:
            # indexing waits for store_faces: once per digest, not once per chunk
            counts = store.write(request.group_id, request.profile, images, context.run_id, optimize=False)
    return StoredChunk(
        images_done=len(images),
        images_unchanged=sum(1 for r in images if r.unchanged),
        faces_detected=sum(r.faces_detected for r in images),
        faces_dropped=sum(r.faces_dropped for r in images),
        faces_too_small=sum(r.faces_too_small for r in images),
        faces_stored=counts.faces_stored if counts else 0,
        faces_replaced=counts.faces_replaced if counts else 0,
        errors=_errors(images),
        seconds=dict(chunk_result.seconds),
    )


@op(out={"faces": Out(), "stored_faces": Out()}, pool=STORE_POOL)
def store_faces(context: OpExecutionContext, image_list, stored_chunks, face_store: FaceStoreResource):
    """Index what the chunks wrote, and write the digest's totals to the event log."""
    errors = [error for chunk in stored_chunks for error in chunk.errors]
    seconds: dict[str, float] = {}
    for chunk in stored_chunks:
        for stage, value in chunk.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    faces = {
        "images_listed": image_list.listed,
        "images_skipped": image_list.skipped,
        "images_to_digest": len(image_list.tasks),
        "images_done": sum(c.images_done for c in stored_chunks),
        "images_failed": len(errors),
        "images_unchanged": sum(c.images_unchanged for c in stored_chunks),
        "faces_detected": sum(c.faces_detected for c in stored_chunks),
        "faces_dropped": sum(c.faces_dropped for c in stored_chunks),
        "faces_too_small": sum(c.faces_too_small for c in stored_chunks),
    }
    with face_store.open() as store:
        store.optimize(image_list.profile)
        stored = {
            "faces_stored": sum(c.faces_stored for c in stored_chunks),
            "faces_replaced": sum(c.faces_replaced for c in stored_chunks),
            "faces_in_group": store.count_faces(image_list.group_id, image_list.profile),
        }
    yield Output(faces, "faces", metadata={
        **faces,
        "failed_images": MetadataValue.json(errors[:MAX_ERRORS_IN_METADATA]),
        "seconds_per_stage": MetadataValue.json({k: round(v, 2) for k, v in seconds.items()}),
    })
    yield Output(stored, "stored_faces", metadata={
        **stored, "profile": image_list.profile, "store_peak_rss_mb": _peak_rss_mb(),
    })
    context.log.info("digest of %s: %s", image_list.source, json.dumps({**faces, **stored}))


@graph_multi_asset(
    outs={
        "image_list": AssetOut(description="The photos listed at the digest's source, less those already digested."),
        "faces": AssetOut(description="Faces detected, aligned and embedded, counted per digest."),
        "stored_faces": AssetOut(description="The group's faces in the Qdrant face store."),
    },
    partitions_def=digest_groups,
)
def digest():
    image_list, chunks = list_images()
    stored_chunks = chunks.map(lambda chunk: store_chunk(chunk, extract_faces_in_chunk(chunk)))
    faces, stored_faces = store_faces(image_list, stored_chunks.collect())
    return {"image_list": image_list, "faces": faces, "stored_faces": stored_faces}
