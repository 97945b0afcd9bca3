"""Every definition loads, light: a broken import or wiring fails here first."""

import json
import os
import subprocess
import sys

from facepipe.definitions import get_digest_job, loaded


def test_definitions_load_with_the_digest_assets_job_and_store():
    defs = loaded()
    job = get_digest_job()
    assert job.name == "digest_job"
    assert job.partitions_def.name == "digest_groups"
    assert "face_store" in defs.resources


def test_the_lineage_is_the_chain_of_the_digest_stages():
    graph = loaded().resolve_asset_graph()
    parents = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert parents == {
        "image_list": [],
        "faces": ["image_list"],
        "embeddings": ["faces"],
        "stored_faces": ["embeddings"],
        "people": ["stored_faces"],
    }
    # the digest job runs the checks of its assets
    checks = {
        (key.asset_key.to_user_string(), key.name) for key in get_digest_job().asset_layer.asset_graph.asset_check_keys
    }
    assert checks == {
        ("stored_faces", "complete"),
        ("faces", "few_failed_photos"),
        ("embeddings", "sound_vectors"),
        ("stored_faces", "count_matches_ledger"),
    }


def test_the_launchpad_form_asks_one_source_and_a_known_profile_and_takes_the_group_from_the_partition():
    schema = get_digest_job().run_config_schema.config_type
    ops = schema.fields["ops"].config_type.fields["digest"].config_type.fields["ops"].config_type
    request = ops.fields["list_images"].config_type.fields["config"].config_type.fields
    assert "group_id" not in request  # the run's partition is the group
    assert {"source", "confidence", "profile", "preset", "min_face_size"} <= set(request)
    # exactly one source: a selector of a local folder or an S3 prefix
    source = request["source"].config_type
    assert source.kind.name == "SELECTOR" and set(source.fields) == {"local_folder", "s3"}
    assert set(source.fields["local_folder"].config_type.fields) == {"path"}
    assert {"bucket", "prefix", "endpoint_url", "region"} <= set(source.fields["s3"].config_type.fields)
    # the profile and the preset are choices the Launchpad renders and refuses anything else for
    profiles = [v.config_value for v in request["profile"].config_type.enum_values]
    assert profiles == ["dlib", "yunet", "retinaface-arcface"]
    assert [v.config_value for v in request["preset"].config_type.enum_values] == ["portraits", "default", "crowd"]
    assert request["preset"].default_value == "default" and not request["min_face_size"].is_required
    workers = schema.fields["execution"].config_type.fields["config"].config_type.fields["workers"]
    assert workers.default_value >= 1


def test_loading_definitions_imports_no_model_library():
    code = (
        "import sys, facepipe.definitions; facepipe.definitions.loaded(); "
        "print(sorted({'cv2', 'deepface', 'dlib', 'onnxruntime', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _celery_wiring(**env: str) -> dict:
    """Whether loading the digest job imports dagster-celery, and each op's Celery queue, under `env`."""
    code = (
        "import json, facepipe.definitions as d; job = d.get_digest_job(); "
        "print(json.dumps({'loads_celery': __import__('sys').modules.get('dagster_celery') is not None, "
        "'queues': {n.name: n.tags.get('dagster-celery/queue') for n in job.graph.node_defs[0].node_defs}}))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("QDRANT_URL", "FACEPIPE_CELERY_BROKER")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**clean, **env})
    return json.loads(out.stdout)


def test_the_store_steps_go_to_the_store_queue_and_with_a_qdrant_server_to_any_worker():
    embedded = _celery_wiring(FACEPIPE_CELERY_BROKER="redis://127.0.0.1:1/0")
    assert embedded["loads_celery"]
    assert embedded["queues"] == {
        "list_images": "facepipe_store",
        "extract_faces_in_chunk": None,  # dagster-celery's default queue, `dagster`: any worker
        "store_chunk": "facepipe_store",
        "store_faces": "facepipe_store",
    }
    server = _celery_wiring(FACEPIPE_CELERY_BROKER="redis://127.0.0.1:1/0", QDRANT_URL="http://q:6333")
    assert set(server["queues"].values()) <= {"dagster", None}
    # no broker: the multiprocess executor, and dagster-celery is not even imported
    assert not _celery_wiring()["loads_celery"]
