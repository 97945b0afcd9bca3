"""Every definition loads, light: a broken import or wiring fails here first."""

import subprocess
import sys

from facepipe.definitions import get_digest_job, loaded


def test_definitions_load_with_the_digest_assets_job_and_store():
    defs = loaded()
    job = get_digest_job()
    assert job.name == "digest_job"
    assert job.partitions_def.name == "digest_groups"
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "image_list", "faces", "stored_faces", "people"}
    assert "face_store" in defs.resources


def test_the_launchpad_form_has_the_digest_request_and_workers():
    schema = get_digest_job().run_config_schema.config_type
    ops = schema.fields["ops"].config_type.fields["digest"].config_type.fields["ops"].config_type
    request = ops.fields["list_images"].config_type.fields["config"].config_type.fields
    assert {"group_id", "local_dir_path", "s3_bucket", "s3_prefix", "confidence", "profile", "preset",
            "min_face_size"} <= set(request)
    assert request["group_id"].is_required and not request["confidence"].is_required
    # the preset is a choice the Launchpad renders and refuses anything else for
    assert [v.config_value for v in request["preset"].config_type.enum_values] == ["portraits", "default", "crowd"]
    assert request["preset"].default_value == "default" and not request["min_face_size"].is_required
    workers = schema.fields["execution"].config_type.fields["config"].config_type.fields["workers"]
    assert workers.default_value >= 1


def test_loading_definitions_imports_no_model_library():
    code = ("import sys, facepipe.definitions; facepipe.definitions.loaded(); "
            "print(sorted({'cv2', 'deepface', 'dlib', 'onnxruntime', 'scipy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
