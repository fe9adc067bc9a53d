import json
import pathlib

from gate.protocol.schema import SCHEMAS, render_schemas

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[2] / "spec" / "schema"


def test_committed_schema_matches_the_structs():
    """Fails when a message changed but spec/schema was not regenerated (`make spec`)."""
    rendered = render_schemas()
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(SCHEMAS)
    for filename, text in rendered.items():
        committed = (SCHEMA_DIR / filename).read_text()
        assert committed == text, f"spec/schema/{filename} is stale: run `make spec`"


def test_schema_documents_tags_and_constraints():
    node = json.loads(render_schemas()["node_message.json"])
    defs = node["$defs"]
    assert defs["Ping"]["properties"]["type"]["enum"] == ["ping"]
    caps = defs["Capabilities"]["properties"]["load_factor"]
    assert (caps["minimum"], caps["maximum"]) == (0.0, 1.0)
    assert defs["Capabilities"]["properties"]["node_id"]["pattern"] == "^[a-z2-7]{51}[aq]$"
