"""Schemathesis fuzzes every operation of /openapi.json: no 5xx, every response as documented."""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.helpers import Loaded, table_checksums
from tests.conftest import BROKER_PREFIX

pytestmark = pytest.mark.slow

MIN_REQUESTS = 1000
EXAMPLES_PER_MODE = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]


@pytest.fixture
def contract_app(loaded: Loaded, redis_url: str) -> Iterator[Any]:
    """The app on the loaded database with high limits; this session's Redis keys removed after."""
    from api import create_app

    yield create_app({"TESTING": True, "RATELIMIT_READS": "1000000/minute",
                      "RATELIMIT_JOBS": "1000000/minute"}, settings=loaded.settings)
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=BROKER_PREFIX + "*", count=500):
            client.delete(key)
    finally:
        client.close()


def test_every_operation_honours_its_documented_contract(
    loaded: Loaded, contract_app: Any
) -> None:
    before = table_checksums(loaded.engine)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", contract_app)
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE
                               else [])

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None,
                      derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def exercise(case: Any) -> None:
                response = case.call()
                calls[operation.label] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=checks)

            try:
                exercise()
            except schemathesis.errors.InvalidSchema:
                raise
            except Exception as exc:
                # An operation without parameters has no negative variant to generate.
                if mode is GenerationMode.NEGATIVE and "Unsatisfiable" in type(exc).__name__:
                    continue
                raise

    total = sum(calls.values())
    print(f"\nschemathesis: {total} requests; by status {dict(sorted(statuses.items()))}")
    for label, n in sorted(calls.items()):
        print(f"  {n:5d}  {label}")
    assert total >= MIN_REQUESTS
    assert set(calls) == {op.label for op in operations}
    assert not [code for code in statuses if code >= 500]
    # Writes were only ever attempted without a valid token: nothing changed.
    assert table_checksums(loaded.engine) == before
