"""The gateway and the sandbox as a user runs them: real processes, real HTTP, free ports."""

import json
import shutil
import socket
import subprocess

import requests

from tests.support.paths import ROOT
from tests.support.processes import BIN, clean_env, wait_for_port
from tests.support.servers import free_port


def mint_with_cli(*args, env, folder):
    """``lms-api token`` run where the gateway runs: it reads the ``.env`` of its working directory, as the gateway
    reads the one beside its ini, so a developer's ``.env`` in the repository never signs for a test's gateway."""
    result = subprocess.run(
        [str(BIN / "lms-api"), "token", *args], cwd=folder, env=env, capture_output=True, text=True, check=True,
        timeout=30,
    )  # fmt: skip
    return result.stdout.strip(), result.stderr


def test_development_ini_serves_the_sandbox_on_the_port_given_on_the_command_line(spawn, tmp_path):
    port = free_port()
    env = clean_env()
    gateway = spawn("pserve", "development.ini", f"http_port={port}", env=env)
    wait_for_port(port, gateway)
    token, warning = mint_with_cli(
        "--sub", "demo-user", "--scope", "siteinfo:read", "--moodle-userid", "3", env=env, folder=tmp_path
    )

    response = requests.get(
        f"http://127.0.0.1:{port}/api/moodle/siteinfo", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )

    assert "development secret" in warning
    assert response.status_code == 200
    assert response.json()["data"]["sitename"] == "lms_api Moodle sandbox"
    assert response.headers["X-Request-ID"]
    refused = requests.get(f"http://127.0.0.1:{port}/api/moodle/siteinfo", timeout=10)
    assert refused.status_code == 401


def test_production_ini_against_a_standalone_sandbox(spawn, tmp_path):
    moodle_port, gateway_port = free_port(), free_port()
    sandbox = spawn("lms-api", "sandbox", "--port", str(moodle_port), "--token", "integration-token", env=clean_env())
    wait_for_port(moodle_port, sandbox)
    env = clean_env(
        MOODLE_BASE_URL=f"http://127.0.0.1:{moodle_port}",
        MOODLE_TOKEN="integration-token",
        JWT_SECRET="integration-secret-" + "x" * 40,
        JWT_AUDIENCE="lms-spa",
    )
    gateway = spawn("pserve", "production.ini", f"http_port={gateway_port}", env=env)
    wait_for_port(gateway_port, gateway)
    token, warning = mint_with_cli("--sub", "ops", "--scope", "admin", env=env, folder=tmp_path)

    response = requests.get(
        f"http://127.0.0.1:{gateway_port}/api/moodle/siteinfo",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "it-1"},
        timeout=10,
    )

    assert warning == ""
    assert response.status_code == 200, response.text
    assert response.json()["data"]["siteurl"] == f"http://127.0.0.1:{moodle_port}"
    gateway.terminate()
    _, logs = gateway.communicate(timeout=10)
    assert any(json.loads(line).get("request_id") == "it-1" for line in logs.splitlines())
    assert "integration-token" not in logs
    lines = logs.splitlines()
    assert [json.loads(line)["logger"] for line in lines if "Starting server in PID" in line] == ["pserve"]
    assert all(isinstance(json.loads(line), dict) for line in lines), "every line of a JSON log is JSON"


def test_console_logs_lead_with_status_method_path_ms_and_sub(spawn):
    port = free_port()
    gateway = spawn("pserve", "development.ini", f"http_port={port}", env=clean_env())
    wait_for_port(port, gateway)

    requests.get(f"http://127.0.0.1:{port}/api/moodle/siteinfo", timeout=10)
    gateway.terminate()
    _, logs = gateway.communicate(timeout=10)

    line = next(line for line in logs.splitlines() if " request " in line)
    fields = [part.split("=", 1)[0] for part in line.split("[lms_api.request]", 1)[1].split()]
    assert fields[:5] == ["status", "method", "path", "ms", "sub"]


def run_pserve_until_it_exits(ini, port, folder):
    """``pserve`` from a folder holding only a copy of ``ini``, expected to stop by itself."""
    shutil.copy(ROOT / ini, folder)
    return subprocess.run(
        [str(BIN / "pserve"), ini, f"http_port={port}"],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_port_in_use_is_one_line_and_exit_status_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_pserve_until_it_exits("development.ini", port, tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == f"lms_api: cannot listen on 127.0.0.1:{port}: the port is already in use"


def test_production_ini_refuses_to_start_without_its_settings(tmp_path):
    result = run_pserve_until_it_exits("production.ini", free_port(), tmp_path)

    assert result.returncode == 2
    assert "MOODLE_BASE_URL is required with production.ini" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_sandbox_on_a_port_in_use_is_one_line_and_exit_status_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "lms-api"), "sandbox", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert result.returncode == 2
    assert result.stderr == f"lms-api: cannot listen on 127.0.0.1:{port}: the port is already in use\n"
    assert result.stdout == ""
