"""POST /jobs on a code tree's own app, in a process of that tree (bench.stacks starts it).

Run as `python -c "<this file's text>"` with the tree as working directory and PYTHONPATH:
it imports nothing but the tree's `api.create_app` and the standard library, so it works for
any commit whose app takes POST /jobs, whatever its module layout. The app is built once
(as a running API process is) and asked through Flask's test client, with the token from
API_TOKEN. Protocol: one line on stdout when ready, `{"ready": true}`; then per line read on
stdin (the sources, comma-separated) one JSON line: the HTTP status, the job id and how long
the request took. A 429 (the jobs quota) is waited out and asked again, untimed.
"""
import json
import os
import sys
import time


def main() -> int:
    """Answer job requests until stdin closes."""
    from api import create_app

    client = create_app().test_client()
    headers = {"Authorization": f"Bearer {os.environ['API_TOKEN']}"}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        sources = [name for name in line.strip().split(",") if name]
        while True:
            started = time.perf_counter()
            response = client.post("/jobs", json={"sources": sources}, headers=headers)
            seconds = time.perf_counter() - started
            if response.status_code != 429:
                break
            time.sleep(float(response.headers.get("Retry-After") or 1))
        body = response.get_json(silent=True) or {}
        data = body.get("data", body) if isinstance(body, dict) else {}
        print(json.dumps({"status": response.status_code, "job_id": data.get("id"),
                          "seconds": seconds, "body": body if response.status_code >= 400
                          else None}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
