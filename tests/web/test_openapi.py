"""The broker's OpenAPI document (web.openapi): every API route is in it with who may
call it, it validates against the OpenAPI 3.1 specification, and a schema-driven fuzz
run (schemathesis: requests built from the document, valid and not) against the running
broker (real slapd, fake host) as each role finds no answer of 500 or above."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.core.result import Ok
from starlette.routing import Route

from tests.web.conftest import FakeHostBroker
from tests.web.test_access import USERS
from web.access import cookie_name
from web.openapi import DOCS, is_api

EXAMPLES = 25  # per operation and role; a few thousand requests in all


def served(fake: FakeHostBroker) -> dict[str, Any]:
    assert fake.broker.client().get("/api/openapi.json").status_code == 401
    r = fake.broker.login("zhangsan").client.get("/api/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    return doc


def test_every_api_route_is_described_and_the_document_validates(
        fake: FakeHostBroker) -> None:
    api_routes = {(m, r.path) for r in fake.broker.app.routes
                  if isinstance(r, Route) and is_api(r.path)
                  for m in (r.methods or set()) - {"HEAD"}}
    assert api_routes == set(DOCS), (
        f"undescribed: {sorted(api_routes - set(DOCS))}; "
        f"described but gone: {sorted(set(DOCS) - api_routes)}")
    doc = served(fake)
    validate(doc)  # raises on anything the OpenAPI 3.1 schema does not allow
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == api_routes
    images = doc["paths"]["/api/admin/images"]["post"]
    assert images["x-permission"] == "manage_images"
    assert images["security"] == [{"session": [], "csrf": []}, {"bearer": []}]
    assert doc["paths"]["/api/tokens"]["post"]["security"] == [{"session": [], "csrf": []}]
    cookie = doc["components"]["securitySchemes"]["session"]["name"]
    assert cookie == cookie_name(fake.broker.settings)


@pytest.mark.parametrize("who", ["anonymous", *USERS])
def test_a_fuzz_run_finds_no_server_error(fake: FakeHostBroker, who: str) -> None:
    schema = schemathesis.openapi.from_dict(served(fake))
    session = requests.Session()
    headers = {"Origin": fake.broker.url}
    cookies: dict[str, str] = {}
    if who != "anonymous":
        signed = fake.broker.login(USERS[who])
        cookies[cookie_name(fake.broker.settings)] = signed.cookie
        headers["X-CSRF-Token"] = signed.csrf
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document loads
        op = result.ok()
        if op.method.upper() == "DELETE" and op.path == "/api/session":
            continue  # signing out would end the run's own session

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def call(case: schemathesis.Case[Any]) -> None:
            r = case.call(base_url=fake.broker.url, session=session, headers=headers,
                          cookies=cookies, timeout=30)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500 and r.status_code != 503:
                failures.append(f"{case.method} {case.formatted_path} -> {r.status_code} "
                                f"{r.text[:200]}")

        call()
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses.values()) >= len(DOCS) * 3, statuses  # the run did run
    print(who, dict(sorted(statuses.items())))


@pytest.mark.parametrize("method, path", [
    ("POST", "/api/pools/window/messages/%C2%B3/seen"),  # "³": a digit to str.isdigit
    ("GET", "/api/admin/images/imports/%C2%B3"),
    ("GET", "/api/admin/images/imports/%D9%A3"),  # Arabic-Indic three
])
def test_what_the_fuzz_run_found_stays_fixed(fake: FakeHostBroker, method: str,
                                             path: str) -> None:
    admin = fake.broker.login("zhaoliu")
    r = admin.client.request(method, path, headers={"X-CSRF-Token": admin.csrf})
    assert r.status_code == 400 and r.json()["error"] == "bad_request", r.text
