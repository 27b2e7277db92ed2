"""GET /jobs: newest first, filters status/trigger/since/until, page numbers and cursors."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, text

from shared.config import Settings
from shared.db import unit_of_work
from shared.jobs.submit import create_job
from tests.api.helpers import coins_csv
from tests.helpers.csv_runs import HEADER, only_file, run_csv


def _get(client: Any, url: str, status: int = 200) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == status, (url, response.get_data(as_text=True))
    body: dict[str, Any] = response.get_json()
    return body


def _jobs(clean_db: Engine, client: Any, settings: Settings, csv_dir: Path,
          auth_headers: dict[str, str]) -> dict[str, int]:
    """One job per trigger: cli (run, succeeded), beat (queued), api (queued)."""
    only_file(csv_dir, "coins.csv", HEADER + coins_csv(1, 3))
    cli = run_csv(clean_db, settings)["job_id"]
    with unit_of_work(clean_db) as session:
        beat = create_job(session, ["coingecko", "csv"], trigger="beat").job.id
    api = client.post("/jobs", json={"sources": ["csv"]}, headers=auth_headers).get_json()["id"]
    return {"cli": cli, "beat": beat, "api": api}


def test_jobs_are_listed_newest_first_with_their_runs(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path,
    auth_headers: dict[str, str],
) -> None:
    ids = _jobs(clean_db, client, settings, csv_dir, auth_headers)
    body = _get(client, "/jobs")
    assert [job["id"] for job in body["data"]] == [ids["api"], ids["beat"], ids["cli"]]
    assert body["pagination"] == {"page": 1, "page_size": 50, "total": 3, "total_pages": 1,
                                  "next_cursor": None}
    assert body["request_id"] and body["api_latency_ms"] >= 0
    by_id = {job["id"]: job for job in body["data"]}
    cli = by_id[ids["cli"]]
    assert cli["trigger"] == "cli" and cli["status"] == "succeeded"
    assert [(r["source"], r["status"]) for r in cli["runs"]] == [("csv", "succeeded")]
    assert cli["runs"][0]["inserted"] == 3
    assert [r["source"] for r in by_id[ids["beat"]]["runs"]] == ["coingecko", "csv"]
    # The list shows each job exactly as GET /jobs/<id> does.
    for job in body["data"]:
        assert _get(client, f"/jobs/{job['id']}") == job


def test_jobs_filter_by_status_trigger_and_time(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path,
    auth_headers: dict[str, str],
) -> None:
    ids = _jobs(clean_db, client, settings, csv_dir, auth_headers)
    ids_of = lambda url: [job["id"] for job in _get(client, url)["data"]]  # noqa: E731
    assert ids_of("/jobs?status=succeeded") == [ids["cli"]]
    assert ids_of("/jobs?status=queued") == [ids["api"], ids["beat"]]
    assert ids_of("/jobs?status=failed") == []
    assert ids_of("/jobs?trigger=beat") == [ids["beat"]]
    assert ids_of("/jobs?trigger=api&status=queued") == [ids["api"]]
    assert _get(client, "/jobs?trigger=api&status=succeeded")["pagination"]["total"] == 0
    # since/until bound created_at: move the cli job a day back.
    with clean_db.begin() as conn:
        conn.execute(text("UPDATE jobs SET created_at = now() - interval '1 day' WHERE id = :id"),
                     {"id": ids["cli"]})
    cut = quote((datetime.now(timezone.utc) - timedelta(hours=1)).isoformat())
    assert ids_of(f"/jobs?since={cut}") == [ids["api"], ids["beat"]]
    assert ids_of(f"/jobs?until={cut}") == [ids["cli"]]
    assert _get(client, f"/jobs?since={cut}")["pagination"]["total"] == 2


def test_jobs_page_by_number_and_by_cursor(
    clean_db: Engine, client: Any, settings: Settings, csv_dir: Path,
    auth_headers: dict[str, str],
) -> None:
    with unit_of_work(clean_db) as session:
        made = [create_job(session, ["csv"], trigger="beat").job for _ in range(7)]
        session.flush()
        expected = sorted((job.id for job in made), reverse=True)
    second = _get(client, "/jobs?page=2&page_size=3")
    assert [j["id"] for j in second["data"]] == expected[3:6]
    assert second["pagination"]["total"] == 7 and second["pagination"]["total_pages"] == 3
    seen: list[int] = []
    page = _get(client, "/jobs?page_size=3")
    while True:
        seen += [j["id"] for j in page["data"]]
        cursor = page["pagination"]["next_cursor"]
        if cursor is None:
            break
        page = _get(client, f"/jobs?page_size=3&cursor={cursor}")
        assert page["pagination"]["page"] is None
    assert seen == expected
    # A cursor of another listing, or a forged one, is a 422 naming `cursor`.
    runs_cursor = _get(client, "/runs?page_size=1")["pagination"]["next_cursor"]
    for bad in (runs_cursor, "eyJ0Ijoiam9icyIsImlkIjoiMSJ9", "zzz"):
        assert "cursor" in _get(client, f"/jobs?cursor={bad}", 422)["errors"]["query"]


def test_bad_job_filters_are_422_naming_the_field(clean_db: Engine, client: Any) -> None:
    for query, field in (("status=done", "status"), ("trigger=cron", "trigger"),
                         ("since=yesterday", "since"), ("page_size=0", "page_size"),
                         ("since=2024-02-01&until=2024-01-01", "until")):
        assert field in _get(client, f"/jobs?{query}", 422)["errors"]["query"], query


def test_jobs_list_is_documented(clean_db: Engine, client: Any) -> None:
    spec = _get(client, "/openapi.json")
    operation = spec["paths"]["/jobs"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"status", "trigger", "since", "until", "page", "page_size", "cursor"} <= names
    trigger = next(p for p in operation["parameters"] if p["name"] == "trigger")
    assert trigger["schema"]["enum"] == ["api", "beat", "cli"]
    assert "200" in operation["responses"]
    assert "post" in spec["paths"]["/jobs"]
    post = spec["paths"]["/jobs"]["post"]
    assert {"400", "415", "422"} <= set(post["responses"])
    sources = post["requestBody"]["content"]["application/json"]["schema"]
    assert sources  # the body schema is documented (a $ref or inline)
