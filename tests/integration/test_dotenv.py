""".env is for running the gateway, never for the tests: a developer's .env where the tests run changes nothing.

``lms-api token`` reads the .env of its working directory (what a developer wants beside ``development.ini``), so
the process tests run it in their gateway's folder. Here the paths that once read the repository's .env run again
with a .env of production keys in the test run's working directory, as a developer's checkout has one.
"""

import subprocess

import jwt
import pytest

from tests.integration import test_processes
from tests.integration.conftest import BIN, clean_env

HOSTILE_SECRET = "developer-secret-0123456789-0123456789-xy"  # 40 characters
HOSTILE_DOTENV = f"""\
MOODLE_BASE_URL=https://moodle.example.edu
MOODLE_TOKEN=x
JWT_SECRET={HOSTILE_SECRET}
JWT_AUDIENCE=something
JWT_ISSUER=https://idp.example.edu
LOG_FORMAT=json
RATE_LIMIT_READ=1/minute
RATE_LIMIT_WRITE=1/minute
RATE_LIMIT_UNAUTHENTICATED=1/minute
MOODLE_TIMEOUT_MS=1
CORS_ALLOWED_ORIGINS=https://app.example.edu
"""


@pytest.fixture
def hostile_dotenv(tmp_path_factory, monkeypatch):
    """The test run's working directory holds a developer's .env (the repository's own is never written)."""
    folder = tmp_path_factory.mktemp("checkout")
    (folder / ".env").write_text(HOSTILE_DOTENV)
    monkeypatch.chdir(folder)
    return folder


def test_the_dotenv_is_read_where_lms_api_token_runs(hostile_dotenv):
    # What makes it hostile: the command signs with the .env of its working directory.
    token = subprocess.run(
        [str(BIN / "lms-api"), "token", "--sub", "ada"], env=clean_env(), capture_output=True, text=True,
        check=True, timeout=30,
    ).stdout.strip()  # fmt: skip

    claims = jwt.decode(token, HOSTILE_SECRET, algorithms=["HS256"], audience="something")
    assert claims["iss"] == "https://idp.example.edu"


def test_the_development_gateway_and_its_tokens_ignore_it(hostile_dotenv, spawn, tmp_path):
    test_processes.test_development_ini_serves_the_sandbox_on_the_port_given_on_the_command_line(spawn, tmp_path)


def test_the_production_gateway_and_its_tokens_ignore_it(hostile_dotenv, spawn, tmp_path):
    test_processes.test_production_ini_against_a_standalone_sandbox(spawn, tmp_path)


def test_the_refusals_of_pserve_and_the_sandbox_ignore_it(hostile_dotenv, tmp_path):
    test_processes.test_production_ini_refuses_to_start_without_its_settings(tmp_path)
    test_processes.test_the_sandbox_on_a_port_in_use_is_one_line_and_exit_status_2(tmp_path)
