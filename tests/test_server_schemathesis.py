"""Property-based requests generated from the app's own OpenAPI schema (schemathesis): whatever a client
sends, no route answers 5xx. The server runs with a short context so every generated request is quick."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from server_helpers import run_server

# Per operation; ~15 operations. Enough to hit every field's edges, small enough for < 2 minutes on 2 cores.
MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_factory, tmp_path_factory):
    folder, _ = tiny_model_factory("llama")
    with run_server(folder, tmp_path_factory.mktemp("fuzz"), "--max-model-len", "24") as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case, fuzz_server):
    body = case.body
    # Mostly name the served model, so generation itself is exercised, not only the 404 path.
    if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 4 != 1:
        body["model"] = fuzz_server.model
    response = case.call(timeout=60)
    assert response.status_code < 500, (case.method, case.path, body, response.text[:500])
    case.validate_response(response, checks=[not_a_server_error])
