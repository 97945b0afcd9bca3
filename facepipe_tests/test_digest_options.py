"""A digest's options are declared once (DigestChoices, domain/request.py): each place a person or a
tool sets them, `facepipe digest`'s options, a watch's fields, the Launchpad's config and the HTTP
body, offers each with the same name, type, default, bounds and help. A field added, renamed or
bounded in one place and not the others fails here."""

from typing import Any

from dagster._config import ConfigTypeKind

from facepipe.cli.main import digest
from facepipe.definitions import get_digest_job
from facepipe.defs.digest.config import DigestConfig
from facepipe.domain.request import DigestChoices, DigestOptions
from facepipe.domain.watching import Watch


def http_openapi() -> dict:
    """The HTTP API's OpenAPI document, as GET /openapi.json serves it."""
    from facepipe.api.app import create_app

    return create_app().openapi()


def from_json_schema(schema: dict) -> dict[str, dict]:
    """Each property of a JSON schema (pydantic's, or an OpenAPI body's) as what a person may give."""
    options = {}
    for name, prop in schema["properties"].items():
        variants = prop.get("anyOf", [prop])
        (kind,) = [v for v in variants if v.get("type") != "null"]
        options[name] = {
            "type": kind.get("type"),
            "choices": kind.get("enum"),
            "minimum": kind.get("minimum"),
            "maximum": kind.get("maximum"),
            "may_be_left_out": name not in schema.get("required", []),
            "default": prop.get("default"),
            "help": prop.get("description"),
        }
    return options


DECLARED = from_json_schema(DigestChoices.model_json_schema())


def offered(options: dict[str, dict]) -> dict[str, Any]:
    """The declared options as `options` offers them (None for one it lacks)."""
    return {name: options.get(name) for name in DECLARED}


def test_the_declaration_names_every_option_with_its_type_default_bounds_and_help():
    assert list(DECLARED) == ["confidence", "profile", "redigest", "chunk_size", "preset", "min_face_size"]
    assert all(option["help"] for option in DECLARED.values())
    assert (DECLARED["confidence"]["minimum"], DECLARED["confidence"]["maximum"]) == (0.0, 1.0)
    assert (DECLARED["chunk_size"]["minimum"], DECLARED["chunk_size"]["default"]) == (1, 200)
    assert DECLARED["min_face_size"] | {"help": None} == {
        "type": "integer",
        "choices": None,
        "minimum": 8,
        "maximum": 100_000,
        "may_be_left_out": True,
        "default": None,  # the preset's
        "help": None,
    }
    assert DECLARED["profile"]["choices"] == ["dlib", "yunet", "retinaface-arcface"]


def test_the_command_line_options_are_the_declared_ones():
    types = {"integer range": "integer", "float range": "number", "choice": "string", "boolean": "boolean"}
    params = {param.name: param for param in digest.params}
    options = {}
    for name in DECLARED:
        param = params.get(name)
        if param is None:
            continue
        assert param.opts == ["--" + name.replace("_", "-")]
        options[name] = {
            "type": types[param.type.name],
            "choices": list(param.type.choices) if param.type.name == "choice" else None,
            "minimum": getattr(param.type, "min", None),
            "maximum": getattr(param.type, "max", None),
            "may_be_left_out": not param.required,
            "default": param.default,
            "help": param.help,
        }
    assert offered(options) == DECLARED


def test_a_watch_takes_the_declared_options_by_the_same_names():
    assert offered(from_json_schema(Watch.model_json_schema())) == DECLARED


def test_the_launchpad_asks_the_declared_options_and_validates_their_bounds():
    schema = get_digest_job().run_config_schema.config_type
    ops = schema.fields["ops"].config_type.fields["digest"].config_type.fields["ops"].config_type
    fields = ops.fields["list_images"].config_type.fields["config"].config_type.fields
    assert set(fields) == set(DigestOptions.model_fields)  # the choices, the source, the sensors' window
    scalars = {"Int": "integer", "Float": "number", "Bool": "boolean", "String": "string"}
    # Dagster's config types carry no bounds: the launch validates them with DigestConfig (pydantic)
    bounds = from_json_schema(DigestConfig.model_json_schema())
    options = {}
    for name in DECLARED:
        field = fields[name]
        kind = field.config_type
        if kind.kind == ConfigTypeKind.NONEABLE:
            kind = kind.inner_type
        enum = kind.kind == ConfigTypeKind.ENUM
        options[name] = {
            "type": "string" if enum else scalars[kind.key.removesuffix("SourceType")],
            "choices": [value.config_value for value in kind.enum_values] if enum else None,
            "minimum": bounds[name]["minimum"],
            "maximum": bounds[name]["maximum"],
            "may_be_left_out": not field.is_required,
            "default": field.default_value if field.default_provided else None,
            "help": field.description,
        }
    assert offered(options) == DECLARED


def test_the_http_body_takes_the_declared_options_by_the_same_names():
    document = http_openapi()
    body = document["paths"]["/v1/digest"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    assert offered(from_json_schema(document["components"]["schemas"][name])) == DECLARED
