import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from lms_api import main
from lms_api.moodle.functions import CacheGroup
from lms_api.settings import (
    DEVELOPMENT_JWT_SECRET,
    DEVELOPMENT_WEBHOOK_SECRET,
    KEYS,
    SETTING_NAMES,
    SettingsError,
    load_settings,
    read_dotenv,
)
from scripts.readme_tables import README, SETTINGS_TABLE, settings_table
from tests.support.paths import ROOT

PRODUCTION = {"lms_api.environment": "production"}
DEVELOPMENT = {"lms_api.environment": "development"}
SECRET = "s" * 40
COMPLETE = {"MOODLE_BASE_URL": "https://moodle.example.edu/", "MOODLE_TOKEN": "tok", "JWT_SECRET": SECRET}


def test_defaults():
    settings = load_settings(PRODUCTION, COMPLETE)

    assert settings.moodle_base_url == "https://moodle.example.edu"
    assert settings.moodle_timeout_ms == 15000
    assert settings.moodle_debug is False
    assert settings.moodle_max_retries == 2
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.jwt_audience is None and settings.jwt_issuer is None
    assert settings.log_format == "json"
    assert not settings.uses_sandbox


@pytest.mark.parametrize(
    ("given", "engine"),
    [
        ({}, "embedded"),
        ({"REDIS_URL": "redis://cache:6379/0"}, "rq"),  # replicas sharing a Redis share their jobs
        ({"REDIS_URL": "redis://cache:6379/0", "JOBS_ENGINE": "embedded"}, "embedded"),
    ],
)
def test_the_job_engine_is_rq_with_a_shared_redis_unless_told(given, engine):
    assert load_settings(PRODUCTION, COMPLETE | given).jobs_engine == engine


def test_environment_beats_dotenv_beats_ini():
    ini = {**PRODUCTION, "moodle_timeout_ms": "1000", "moodle_max_retries": "1", "log_format": "console"}
    dotenv = {"MOODLE_TIMEOUT_MS": "2000", "MOODLE_MAX_RETRIES": "3"}
    environ = {**COMPLETE, "MOODLE_TIMEOUT_MS": "3000"}

    settings = load_settings(ini, environ, dotenv)

    assert settings.moodle_timeout_ms == 3000
    assert settings.moodle_max_retries == 3
    assert settings.log_format == "console"


def test_dotenv_is_read_from_the_given_directory(tmp_path):
    (tmp_path / ".env").write_text("MOODLE_TOKEN=from-dotenv\nJWT_ISSUER=https://idp\n")

    assert read_dotenv(tmp_path) == {"MOODLE_TOKEN": "from-dotenv", "JWT_ISSUER": "https://idp"}
    assert read_dotenv(tmp_path / "missing") == {}


@pytest.mark.parametrize("missing", ["MOODLE_BASE_URL", "MOODLE_TOKEN", "JWT_SECRET"])
def test_production_needs_moodle_and_a_jwt_key(missing):
    environ = {key: value for key, value in COMPLETE.items() if key != missing}

    with pytest.raises(SettingsError, match=missing):
        load_settings(PRODUCTION, environ)


def test_development_without_a_moodle_uses_the_sandbox_and_a_development_key():
    settings = load_settings(DEVELOPMENT, {})

    assert settings.uses_sandbox
    assert settings.uses_development_jwt_secret
    assert settings.jwt_secret == DEVELOPMENT_JWT_SECRET


def test_a_moodle_url_needs_a_token_in_development_too():
    with pytest.raises(SettingsError, match="MOODLE_TOKEN"):
        load_settings(DEVELOPMENT, {"MOODLE_BASE_URL": "https://moodle.example.edu"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MOODLE_TIMEOUT_MS", "soon"),
        ("MOODLE_TIMEOUT_MS", "0"),
        ("MOODLE_MAX_RETRIES", "-1"),
        ("MOODLE_DEBUG", "maybe"),
        ("MOODLE_BASE_URL", "moodle.example.edu"),
        ("MOODLE_BASE_URL", "ftp://moodle.example.edu"),
        ("MOODLE_BASE_URL", "https://moodle.example.edu/?x=1"),
        ("JWT_ALGORITHMS", "none"),
        ("JWT_ALGORITHMS", "HS256,RS256"),
        ("JWT_SECRET", "short"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_key(key, value):
    with pytest.raises(SettingsError, match=key):
        load_settings(PRODUCTION, {**COMPLETE, key: value})


def test_a_longer_hash_needs_a_longer_key():
    with pytest.raises(SettingsError, match="JWT_SECRET must be at least 64 bytes"):
        load_settings(PRODUCTION, {**COMPLETE, "JWT_ALGORITHMS": "HS256, HS512"})
    assert load_settings(PRODUCTION, {**COMPLETE, "JWT_ALGORITHMS": "HS512", "JWT_SECRET": "k" * 64})


def test_an_unknown_environment_is_refused():
    with pytest.raises(SettingsError, match=r"lms_api\.environment"):
        load_settings({"lms_api.environment": "staging"}, COMPLETE)


def test_secrets_never_show_in_repr_or_errors():
    settings = load_settings(PRODUCTION, {**COMPLETE, "MOODLE_TOKEN": "TOKEN-CANARY", "JWT_SECRET": "J" * 40})

    assert "TOKEN-CANARY" not in repr(settings) and "J" * 40 not in repr(settings)
    assert set(settings.secrets) == {"TOKEN-CANARY", "J" * 40}
    with pytest.raises(SettingsError) as caught:
        load_settings(PRODUCTION, {**COMPLETE, "JWT_SECRET": "SHORT-CANARY"})
    assert "SHORT-CANARY" not in str(caught.value)


def test_main_names_every_missing_or_bad_setting_at_once_a_line_each(monkeypatch, capsys, tmp_path):
    for key in COMPLETE:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MOODLE_TIMEOUT_MS", "soon")

    with pytest.raises(SystemExit) as caught:
        main({"here": str(tmp_path)}, **PRODUCTION)

    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "lms_api: configuration error: MOODLE_TIMEOUT_MS must be a whole number, got 'soon'",
        "lms_api: configuration error: MOODLE_BASE_URL is required with production.ini: "
        "set it in the environment or in .env",
        "lms_api: configuration error: MOODLE_TOKEN is required with production.ini: "
        "set it in the environment or in .env",
        "lms_api: configuration error: JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is required with production.ini: "
        "set it in the environment or in .env",
    ]


def test_every_refused_value_is_named_in_one_error_without_repeating_a_secret():
    environ = {
        **COMPLETE,
        "MOODLE_BASE_URL": "ftp://moodle",
        "RATE_LIMIT_READ": "many",
        "JWT_SECRET": "SHORT-CANARY",
        "MOODLE_ASSIGNABLE_ROLES": "student,tutor",
    }

    with pytest.raises(SettingsError) as caught:
        load_settings(PRODUCTION, environ)

    named = [problem.split(" ", 1)[0] for problem in caught.value.problems]
    assert named == ["MOODLE_BASE_URL", "RATE_LIMIT_READ", "MOODLE_ASSIGNABLE_ROLES", "JWT_SECRET"]
    assert "SHORT-CANARY" not in str(caught.value)


def test_development_with_a_real_moodle_refuses_the_public_development_secret():
    with pytest.raises(SettingsError) as caught:
        load_settings(DEVELOPMENT, {"MOODLE_BASE_URL": "https://moodle.example.edu", "MOODLE_TOKEN": "t"})

    assert caught.value.problems == (
        "JWT_SECRET (or JWT_PUBLIC_KEY or JWT_JWKS_URL) is required when MOODLE_BASE_URL is set: "
        "the development secret is public and must never guard a real Moodle",
    )
    with_key = {"MOODLE_BASE_URL": "https://moodle.example.edu", "MOODLE_TOKEN": "t", "JWT_SECRET": "k" * 32}
    assert not load_settings(DEVELOPMENT, with_key).uses_development_jwt_secret


def test_an_empty_value_in_the_environment_overrides_dotenv_and_means_the_default():
    dotenv = {"MOODLE_BASE_URL": "https://moodle.example.edu", "MOODLE_TOKEN": "t", "MOODLE_TIMEOUT_MS": "900"}

    settings = load_settings(DEVELOPMENT, {"MOODLE_BASE_URL": "", "MOODLE_TIMEOUT_MS": ""}, dotenv)

    assert settings.uses_sandbox
    assert settings.moodle_timeout_ms == 15000
    assert settings.uses_development_jwt_secret


def test_assignable_roles_course_formats_answer_and_body_limits_and_public_url():
    settings = load_settings(PRODUCTION, COMPLETE)
    assert settings.moodle_assignable_roles == ("student", "teacher", "editingteacher")
    assert settings.moodle_course_formats == ("topics", "weeks", "social", "singleactivity")
    assert (settings.moodle_max_answer_mb, settings.max_json_body_kb, settings.public_url) == (32, 1024, None)
    custom = {
        **COMPLETE,
        "MOODLE_ROLE_IDS": "tutor=9",
        "MOODLE_ASSIGNABLE_ROLES": "student, tutor",
        "MOODLE_COURSE_FORMATS": "topics,flexsections",
        "PUBLIC_URL": "https://API.example.edu/",
    }
    settings = load_settings(PRODUCTION, custom)
    assert settings.moodle_assignable_roles == ("student", "tutor")
    assert settings.moodle_course_formats == ("topics", "flexsections")
    assert settings.public_url == "https://API.example.edu"
    for key, value in (
        ("MOODLE_COURSE_FORMATS", "Topics"),
        ("MOODLE_COURSE_FORMATS", ","),
        ("PUBLIC_URL", "https://api.example.edu/gateway"),
        ("MAX_JSON_BODY_KB", "0"),
        ("MOODLE_MAX_ANSWER_MB", "0"),
    ):
        with pytest.raises(SettingsError, match=key):
            load_settings(PRODUCTION, {**COMPLETE, key: value})


def _pem(private):
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_pem():
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_pem():
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def without_secret(**extra):
    return {**{k: v for k, v in COMPLETE.items() if k != "JWT_SECRET"}, **extra}


def test_algorithms_follow_the_keys_given(rsa_pem, ec_pem):
    assert load_settings(PRODUCTION, COMPLETE).jwt_algorithms == ("HS256",)
    assert load_settings(PRODUCTION, without_secret(JWT_PUBLIC_KEY=rsa_pem)).jwt_algorithms == ("RS256",)
    assert load_settings(PRODUCTION, without_secret(JWT_PUBLIC_KEY=ec_pem)).jwt_algorithms == ("ES256",)
    jwks = load_settings(PRODUCTION, without_secret(JWT_JWKS_URL="https://idp.example.edu/jwks"))
    assert jwks.jwt_algorithms == ("RS256", "ES256") and jwks.jwt_secret is None


def test_a_public_key_may_be_a_file_or_one_line_with_escaped_newlines(tmp_path, rsa_pem):
    (tmp_path / "idp.pem").write_text(rsa_pem)

    from_file = load_settings(PRODUCTION, without_secret(JWT_PUBLIC_KEY=str(tmp_path / "idp.pem")))
    one_line = load_settings(PRODUCTION, without_secret(JWT_PUBLIC_KEY=rsa_pem.strip().replace("\n", "\\n")))

    expected = load_pem_public_key(rsa_pem.encode()).public_numbers()
    assert from_file.jwt_public_key.public_numbers() == one_line.jwt_public_key.public_numbers() == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"JWT_ALGORITHMS": "RS256"}, "RS256, which needs JWT_PUBLIC_KEY or JWT_JWKS_URL"),
        ({"JWT_SECRET": "", "JWT_JWKS_URL": "https://idp/jwks", "JWT_ALGORITHMS": "HS256"}, "needs JWT_SECRET"),
        ({"JWT_SECRET": "", "JWT_PUBLIC_KEY": "not a key"}, "JWT_PUBLIC_KEY"),
        ({"JWT_JWKS_URL": "http://idp.example.edu/jwks"}, "JWT_JWKS_URL must be an https:// URL"),
        ({"JWT_ALGORITHMS": "none"}, "'none' is not supported"),
        ({"JWT_SECRET": ""}, "JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL is required"),
        ({"MOODLE_BASE_URL": "http://moodle.example.edu"}, "MOODLE_BASE_URL must be https://"),
        ({"MOODLE_BASE_URL": "HTTP://moodle.example.edu"}, "MOODLE_BASE_URL must be https://"),
        ({"RATE_LIMIT_READ": "600 per minute"}, "RATE_LIMIT_READ must look like '600/minute'"),
        ({"RATE_LIMIT_WRITE": "0/minute"}, "RATE_LIMIT_WRITE"),
        ({"CORS_ALLOWED_ORIGINS": "*"}, "no '*'"),
        ({"CORS_ALLOWED_ORIGINS": "https://app.example.edu/spa"}, "CORS_ALLOWED_ORIGINS"),
        ({"TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "TRUSTED_PROXIES"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
        ({"JOBS_ENGINE": "celery"}, "JOBS_ENGINE must be 'embedded' or 'rq'"),
        ({"JOBS_ENGINE": "rq"}, "JOBS_ENGINE=rq needs REDIS_URL"),
    ],
)
def test_bad_security_settings_are_refused_naming_the_key(environ, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(PRODUCTION, {**COMPLETE, **environ})


def test_an_ec_key_cannot_verify_rsa_algorithms(ec_pem):
    with pytest.raises(SettingsError, match="EC key; it cannot verify RS256"):
        load_settings(PRODUCTION, without_secret(JWT_PUBLIC_KEY=ec_pem, JWT_ALGORITHMS="RS256"))


def test_plain_http_to_moodle_is_allowed_on_loopback_or_when_asked():
    assert load_settings(PRODUCTION, {**COMPLETE, "MOODLE_BASE_URL": "http://127.0.0.1:8089"}).moodle_base_url
    insecure = {**COMPLETE, "MOODLE_BASE_URL": "http://moodle.internal", "MOODLE_ALLOW_INSECURE": "true"}
    assert load_settings(PRODUCTION, insecure).moodle_base_url == "http://moodle.internal"
    development = {"MOODLE_BASE_URL": "http://moodle.internal", "MOODLE_TOKEN": "t", "JWT_SECRET": "k" * 32}
    assert load_settings(DEVELOPMENT, development)


def test_rate_limits_proxies_and_origins():
    settings = load_settings(
        PRODUCTION,
        {
            **COMPLETE,
            "RATE_LIMIT_READ": "10/second",
            "TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "CORS_ALLOWED_ORIGINS": "https://app.example.edu, http://localhost:5173/",
            "REDIS_URL": "redis://:hunter2@cache:6379/0",
            "JOBS_ENGINE": " RQ ",
        },
    )

    assert settings.jobs_engine == "rq"
    assert (settings.rate_limit_read.count, settings.rate_limit_read.period_s) == (10, 1)
    assert (settings.rate_limit_write.count, settings.rate_limit_write.period_s) == (120, 60)
    assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert settings.cors_allowed_origins == ("https://app.example.edu", "http://localhost:5173")
    assert "redis://:hunter2@cache:6379/0" in settings.secrets


def test_a_copy_of_env_example_starts_the_development_gateway(tmp_path):
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())

    settings = load_settings(DEVELOPMENT, {}, read_dotenv(tmp_path))

    assert settings.uses_sandbox and settings.uses_development_jwt_secret
    assert settings.jwt_algorithms == ("HS256",)


def test_readme_configuration_table_is_printed_from_the_declaration():
    readme = README.read_text()

    assert SETTINGS_TABLE.in_readme(readme) == readme, "run: .venv/bin/python scripts/readme_tables.py --write"


def test_the_table_has_a_row_per_setting_with_its_default_and_meaning():
    rows = settings_table().splitlines()[2:]

    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [f"`{name}`" for name in SETTING_NAMES]
    assert "| `MOODLE_TIMEOUT_MS` | `15000` | deadline of one logical Moodle call, retries included |" in rows
    assert rows[0].startswith("| `MOODLE_BASE_URL` | — (sandbox under `development.ini`) | ")
    assert any(row.startswith("| `MOODLE_ROLE_IDS` | — | ") for row in rows)
    assert any(row.startswith("| `JWT_ALGORITHMS` | from the keys: ") for row in rows)


def test_each_setting_is_a_field_read_from_its_key_in_every_layer():
    settable = {name: key for name, key in KEYS.items() if key.fallback}
    ini = {**PRODUCTION, **{name.lower(): "" for name in settable}}

    from_ini, defaults = load_settings(ini, COMPLETE), load_settings(PRODUCTION, COMPLETE)

    for name, key in settable.items():
        assert getattr(defaults, name.lower()) == key.parse(name, key.fallback), name
        assert getattr(from_ini, name.lower()) == getattr(defaults, name.lower()), name
    assert {"MOODLE_TIMEOUT_MS", "JWT_SECRET", "MOODLE_ALLOW_INSECURE", "PUBLIC_URL"} <= set(SETTING_NAMES)
    assert not {"ENVIRONMENT", "SECRETS", "USES_DEVELOPMENT_JWT_SECRET"} & set(SETTING_NAMES)
    assert load_settings({**PRODUCTION, "moodle_breaker_failures": "7"}, COMPLETE).moodle_breaker_failures == 7


def test_every_setting_has_a_one_line_meaning_and_a_default_it_accepts():
    for name, key in KEYS.items():
        assert key.meaning and "\n" not in key.meaning and not key.meaning.endswith("."), name
        assert "|" not in key.meaning + key.shown_default, f"{name} would break README's table"
        if key.fallback:
            key.parse(name, key.fallback)  # raises SettingsError if the declared default is one the key refuses


def test_every_cache_group_has_a_default_time_to_live_and_only_they_can_be_set():
    ttls = load_settings(PRODUCTION, COMPLETE).cache_ttls

    assert set(ttls) == set(CacheGroup)
    assert ttls[CacheGroup.SITE_INFO] == 300 and ttls[CacheGroup.NOTIFICATIONS] == 0
    assert load_settings(PRODUCTION, {**COMPLETE, "CACHE_TTLS": "users=5"}).cache_ttls[CacheGroup.USERS] == 5
    with pytest.raises(SettingsError, match="groups: siteinfo, courses, users, notifications; seconds"):
        load_settings(PRODUCTION, {**COMPLETE, "CACHE_TTLS": "events=5"})


def test_the_secret_settings_are_declared_secret():
    assert [name for name, key in KEYS.items() if key.secret] == [
        "MOODLE_TOKEN",
        "JWT_SECRET",
        "REDIS_URL",
        "WEBHOOK_SECRET",
    ]


def test_the_webhook_secret_is_unset_unless_given_but_on_the_sandbox():
    assert load_settings(PRODUCTION, COMPLETE).webhook_secret is None
    assert load_settings(DEVELOPMENT, COMPLETE).webhook_secret is None  # a real Moodle: never the public secret
    assert load_settings(DEVELOPMENT, {}).webhook_secret == DEVELOPMENT_WEBHOOK_SECRET
    given = load_settings(PRODUCTION, {**COMPLETE, "WEBHOOK_SECRET": "w" * 32})
    assert given.webhook_secret == "w" * 32 and "w" * 32 in given.secrets


def test_a_short_webhook_secret_is_refused_without_repeating_it():
    with pytest.raises(SettingsError) as refused:
        load_settings(PRODUCTION, {**COMPLETE, "WEBHOOK_SECRET": "short-secret"})

    assert refused.value.problems == ("WEBHOOK_SECRET must be at least 32 characters long",)


# Settings that take any text: read back as set; every other one refuses a NUL, and its problem names it.
FREE_TEXT = {"MOODLE_TOKEN", "JWT_AUDIENCE", "JWT_ISSUER"}


@pytest.mark.parametrize("layer", ["environment", "ini"])
def test_every_setting_is_read_from_its_own_key_in_each_layer(layer):
    for name in KEYS:
        environ = {key: value for key, value in COMPLETE.items() if key != name}  # nothing above the ini shadows it
        value = "read-from-its-key" if name in FREE_TEXT else "\x00refused"
        layers = (
            (PRODUCTION, {**environ, name: value})
            if layer == "environment"
            else (
                {**PRODUCTION, name.lower(): value},
                environ,
            )
        )
        if name in FREE_TEXT:
            assert getattr(load_settings(*layers), name.lower()) == value, name
            continue
        with pytest.raises(SettingsError) as refused:
            load_settings(*layers)
        assert any(name in problem for problem in refused.value.problems), name
