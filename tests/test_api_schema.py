"""The OpenAPI document is kept true: schemathesis drives every operation from it.

Generated requests (valid and invalid) must never get a 5xx, and every answer
must match the documented status codes, content type and schema. The schema is
loaded from the running app of each test, so this runs on both databases.
"""

from __future__ import annotations

import itertools
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 40
# What the document promises. Left out: "schema-valid data is accepted" - the
# document types an address as a string, and the service rightly refuses most strings.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

pytestmark = pytest.mark.fuzz  # hypothesis runs inside the test, which the conftest cannot see


def test_every_operation_keeps_to_its_schema(app, runner):
    scopes = ("read", "subscribe", "opt_out", "contact")
    args = ["tokens", "create", "schema check", *(arg for scope in scopes for arg in ("--scope", scope))]
    args += ["--notice", "munkeby", "--notice", "mysoft"]
    headers = {"Authorization": f"Bearer {json.loads(runner.invoke(args=args).stdout)['token']}"}
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):  # type: ignore[no-untyped-def]
            case.call_and_validate(headers=headers, checks=CHECKS)
            # Mail a call handed over is sent by a thread; let it finish before Hypothesis draws
            # the next case (composing a mail draws on the shared ``random``, for MIME boundaries).
            app.extensions["after_response"].wait_idle(timeout=60)

        check()
