"""The lms-api command in process: minting tokens and starting the sandbox (its server is a stand-in here)."""

import socket
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import moodle_sandbox.server
from lms_api import cli
from lms_api.settings import DEVELOPMENT_JWT_SECRET, SETTING_NAMES


@pytest.fixture(autouse=True)
def no_settings_around(monkeypatch, tmp_path):
    """Nothing from the developer's environment or .env reaches the command."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_a_token_is_signed_with_the_development_secret_when_none_is_set(capsys):
    assert cli.main(["token", "--sub", "ada", "--scope", "courses:read users:read", "--moodle-userid", "3"]) == 0

    out, err = capsys.readouterr()
    claims = jwt.decode(out.strip(), DEVELOPMENT_JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["scope"], claims["moodle_userid"]) == ("ada", "courses:read users:read", 3)
    assert "development secret" in err


def test_a_token_is_signed_with_jwt_secret(monkeypatch, capsys):
    monkeypatch.setenv("JWT_SECRET", "s" * 40)

    assert cli.main(["token", "--sub", "ada", "--ttl", "60"]) == 0

    claims = jwt.decode(capsys.readouterr().out.strip(), "s" * 40, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 60


def test_an_unknown_scope_is_refused_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["token", "--sub", "ada", "--scope", "courses:delete"])

    assert stopped.value.code == 2
    assert "unknown scope(s) courses:delete" in capsys.readouterr().err


def test_a_bad_setting_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setenv("JWT_SECRET", "short")

    assert cli.main(["token", "--sub", "ada"]) == 2
    assert "configuration error: JWT_SECRET must be at least 32 bytes" in capsys.readouterr().err


def test_only_a_public_key_cannot_sign(monkeypatch, capsys):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    monkeypatch.setenv("JWT_PUBLIC_KEY", pem)

    assert cli.main(["token", "--sub", "ada"]) == 2
    assert "can only be signed with JWT_SECRET" in capsys.readouterr().err


class StandInSandbox:
    url, serving = "http://127.0.0.1:8089", False
    site = SimpleNamespace(token="sandbox-token")

    def serve_forever(self):
        self.serving = True
        raise KeyboardInterrupt  # Ctrl-C

    def server_close(self):
        self.closed = True


def test_the_sandbox_starts_with_the_options_given_and_stops_on_ctrl_c(monkeypatch, capsys):
    built, server = {}, StandInSandbox()

    def build(host, port, **options):
        built.update(host=host, port=port, **options)
        return server

    monkeypatch.setattr(moodle_sandbox.server, "build_sandbox", build)
    argv = ["sandbox", "--port", "9000", "--token", "t", "--functions", "core_webservice_get_site_info, x_y",
            "--max-input-vars", "100", "--no-upload-files", "--fault-rate", "0.5", "--fault", "delay",
            "--debug"]  # fmt: skip

    assert cli.main(argv) == 0

    assert "Moodle sandbox on http://127.0.0.1:8089  token: sandbox-token" in capsys.readouterr().out
    assert server.serving and server.closed
    assert built == {
        "host": "127.0.0.1", "port": 9000, "token": "t", "service_functions": ["core_webservice_get_site_info", "x_y"],
        "debug": True, "max_bytes": 0, "upload_files": False, "latency_ms": 0.0, "fault_rate": 0.5,
        "random_fault": "delay", "max_input_vars": 100,
    }  # fmt: skip


def test_an_unknown_fault_kind_is_status_2(capsys):
    assert cli.main(["sandbox", "--fault", "meteor"]) == 2
    assert "--fault must be one of" in capsys.readouterr().err


def test_the_sandbox_on_a_port_in_use_is_one_line_and_status_2(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        assert cli.main(["sandbox", "--port", str(port)]) == 2

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"lms-api: cannot listen on 127.0.0.1:{port}: the port is already in use\n")


def test_the_sandbox_on_an_address_not_of_this_host_says_why(capsys):
    assert cli.main(["sandbox", "--host", "192.0.2.1", "--port", "8089"]) == 2  # TEST-NET-1: never this host's

    assert capsys.readouterr().err == "lms-api: cannot listen on 192.0.2.1:8089: Cannot assign requested address\n"
