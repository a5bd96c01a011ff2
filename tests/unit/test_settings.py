import pytest

from lms_api import main
from lms_api.settings import DEVELOPMENT_JWT_SECRET, SettingsError, load_settings, read_dotenv

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


def test_main_stops_with_one_clear_line_on_a_bad_setting(monkeypatch, capsys, tmp_path):
    for key in COMPLETE:
        monkeypatch.delenv(key, raising=False)

    with pytest.raises(SystemExit) as caught:
        main({"here": str(tmp_path)}, **PRODUCTION)

    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "lms_api: configuration error: MOODLE_BASE_URL is required with production.ini: "
        "set it in the environment or in .env"
    )
