"""The committed JSON Schemas in plans/schema are the ones generated from the dataclasses."""

import json
from pathlib import Path

from autoseg.schema.jsonschema import schema_files

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "plans" / "schema"


def test_committed_schemas_are_up_to_date():
    for name, schema in schema_files().items():
        committed = json.loads((SCHEMA_DIR / name).read_text())
        assert committed == schema, f"plans/schema/{name} is stale: run python -m autoseg.schema.jsonschema"


def test_plans_schema_documents_the_stable_keys():
    schema = schema_files()["plans.schema.json"]
    plans = schema["$defs"]["Plans"]["properties"]
    assert {"transpose_forward", "transpose_backward", "configurations"} <= set(plans)
    cfg = schema["$defs"]["ConfigurationPlan"]["properties"]
    assert {"spacing", "patch_size", "batch_size", "architecture", "normalization"} <= set(cfg)
    assert all("description" in v for v in cfg.values())
    arch = schema["$defs"]["ArchitecturePlan"]["properties"]
    assert arch["strides"]["items"]["type"] == "array"
