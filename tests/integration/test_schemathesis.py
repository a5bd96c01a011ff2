"""schemathesis against the running gateway on the sandbox, every operation of the OpenAPI document: no 5xx, and
every answer conforms to its documented status codes, content type, headers and schema."""

import subprocess

import requests

from tests.support.processes import BIN, clean_env, wait_for_port
from tests.support.servers import free_port

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"  # noqa: E501
EXAMPLES_PER_OPERATION = 10  # bounded so the suite stays fast; README has the command for a long run
# The fuzzing phase only: the coverage phase's 650-odd boundary cases take 10 s, and are for the long run.
PHASES = "fuzzing"
SEED = "20261201"  # the same examples on every run: what fails is reproducible


def test_every_operation_answers_as_documented(spawn, tmp_path):
    port = free_port()
    unlimited = {f"RATE_LIMIT_{kind}": "1000000/minute" for kind in ("READ", "WRITE", "UNAUTHENTICATED")}
    gateway = spawn("pserve", "development.ini", f"http_port={port}", env=clean_env(**unlimited), log="gateway.log")
    wait_for_port(port, gateway)
    document = requests.get(f"http://127.0.0.1:{port}/api/moodle/openapi.json", timeout=10).json()
    operations = sum(len(item) for item in document["paths"].values())  # each route and method the views declare
    token = subprocess.run(
        [str(BIN / "lms-api"), "token", "--sub", "schemathesis", "--scope", "admin", "--moodle-userid", "3"],
        env=clean_env(), capture_output=True, text=True, check=True, cwd=tmp_path,  # the gateway's folder: its .env
    ).stdout.strip()  # fmt: skip
    # A token the gateway refuses would make every operation a 401, which the checks accept as documented.
    siteinfo = requests.get(
        f"http://127.0.0.1:{port}/api/moodle/siteinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert siteinfo.status_code == 200, siteinfo.text

    run = subprocess.run(
        [str(BIN / "st"), "run", f"http://127.0.0.1:{port}/api/moodle/openapi.json",
         "--header", f"Authorization: Bearer {token}", "--checks", CHECKS,
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--phases", PHASES, "--seed", SEED,
         "--workers", "1", "--no-color"],
        cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert operations and f"{operations} selected / {operations} total" in run.stdout
