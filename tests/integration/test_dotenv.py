""".env is for running the gateway, never for the tests: a developer's .env where the tests run changes nothing.

``lms-api token`` reads the .env of its working directory (what a developer wants beside ``development.ini``), so
the process tests run it in their gateway's folder. Here the paths that once read the repository's .env run again
with a .env of production keys in the test run's working directory, as a developer's checkout has one.
"""

import io
import re
import subprocess

import jwt
import pytest
from dotenv import dotenv_values

from lms_api.settings import SETTING_NAMES, SettingsError, load_settings
from tests.integration import test_processes
from tests.support.paths import ROOT
from tests.support.processes import BIN, clean_env

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


# -- .env.example: what a developer copies ------------------------------------------------------------

EXAMPLE = ROOT / ".env.example"
DEVELOPMENT_INI = {"lms_api.environment": "development"}
YOURS = {"MOODLE_BASE_URL": "https://moodle.example.edu", "MOODLE_TOKEN": "0123456789abcdef0123456789abcdef",
         "JWT_SECRET": HOSTILE_SECRET}  # fmt: skip


def example(*, uncommented=()):
    """.env.example as ``read_dotenv`` reads it, with the commented lines of ``uncommented`` keys taken in too."""
    lines = EXAMPLE.read_text().splitlines()
    taken = [
        line.removeprefix("# ") if line.removeprefix("# ").split("=")[0] in uncommented else line for line in lines
    ]
    return dict(dotenv_values(stream=io.StringIO("\n".join(taken))))


def test_every_setting_is_in_the_example_with_its_meaning_and_nothing_else_is():
    lines = EXAMPLE.read_text().splitlines()
    setting = re.compile(r"(# )?([A-Z][A-Z0-9_]+)=")
    named = [match[2] for match in map(setting.match, lines) if match]

    assert sorted(named) == sorted(SETTING_NAMES)
    for index, line in enumerate(lines):
        if setting.match(line):
            above = next(text for text in reversed(lines[:index]) if not setting.match(text))  # keys of a group
            assert above.startswith("# ") and not above.startswith("# --"), f"{line} has no line saying what it is"


def test_the_example_as_copied_loads_under_development_on_the_sandbox_with_console_logs():
    settings = load_settings(DEVELOPMENT_INI, {}, example())

    assert settings.uses_sandbox
    assert settings.log_format == "console"


def test_the_example_filled_in_points_development_at_your_moodle():
    settings = load_settings(DEVELOPMENT_INI, {}, example() | YOURS)

    assert (settings.moodle_base_url, settings.jwt_secret) == (YOURS["MOODLE_BASE_URL"], HOSTILE_SECRET)
    assert not settings.uses_development_jwt_secret


def test_a_moodle_without_its_token_and_a_key_of_your_own_is_refused_naming_both():
    with pytest.raises(SettingsError) as refused:
        load_settings(DEVELOPMENT_INI, {}, example() | {"MOODLE_BASE_URL": YOURS["MOODLE_BASE_URL"]})

    assert [problem.split()[0] for problem in refused.value.problems] == ["MOODLE_TOKEN", "JWT_SECRET"]


def test_every_value_shown_for_production_is_one_production_takes():
    # The public key and the JWKS URL are the JWT_SECRET's alternatives: one of the three at a time.
    shown = [name for name in SETTING_NAMES if name not in ("JWT_PUBLIC_KEY", "JWT_JWKS_URL")]

    settings = load_settings({"lms_api.environment": "production"}, {}, example(uncommented=shown) | YOURS)

    assert settings.moodle_role_ids["tutor"] == 9
    assert settings.public_url == "https://api.example.edu"
