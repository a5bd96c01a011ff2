"""Debian's nginx with nchan, run from the configuration the repository ships (deploy/nginx/lms_api.conf) as this user,
in the foreground, everything it writes in a folder of the test's: the lines marked EDIT replaced with the test's
ports, name and certificate."""

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.processes import wait_for_port

NGINX = "/usr/sbin/nginx"
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
SHIPPED = ROOT / "deploy" / "nginx" / "lms_api.conf"
NAME = "lms.test"
SHIPPED_READ_TIMEOUT = "proxy_read_timeout 20m;"
PUBLISH_PATH = "/lms_api/publish"  # nchan's publisher location, on the loopback server
STATUS_PATH = "/lms_api/nchan_status"  # nchan_stub_status, on the same server


def render(
    folder,
    https_port,
    http_port,
    gateway_port,
    publish_port,
    read_timeout=None,
    redis_url=None,
    name=NAME,
    worker_connections=512,
):
    """The shipped file with this test's ports, ``name`` and its certificate (``<name>.pem`` and ``<name>.key`` in
    ``folder``) in place of the lines marked EDIT, IPv6 on;
    ``read_timeout`` in place of the shipped ``proxy_read_timeout``; nchan's channels kept in the Redis at
    ``redis_url`` (its commented lines uncommented) when given."""
    text = SHIPPED.read_text()
    timeout = [(SHIPPED_READ_TIMEOUT, 1, f"proxy_read_timeout {read_timeout};")] if read_timeout else []
    redis = []
    if redis_url:
        redis = [
            ("# upstream lms_api_nchan_redis {", 1, "upstream lms_api_nchan_redis {"),
            ("#     nchan_redis_server redis://127.0.0.1:6379/0;", 1, f"    nchan_redis_server {redis_url};"),
            ("\n# }\n", 1, "\n}\n"),
            ("# nchan_redis_pass lms_api_nchan_redis;", 2, "nchan_redis_pass lms_api_nchan_redis;"),
        ]
    for line, count, replacement in [
        *timeout,
        *redis,
        ("listen 80;", 1, f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl", 2, f"listen 127.0.0.1:{https_port} ssl"),
        ("# listen [::]:443 ssl", 2, f"listen [::1]:{https_port} ssl"),
        ("server_name api.example.edu;", 2, f"server_name {name};"),
        ("/etc/ssl/certs/api.example.edu.pem", 1, str(folder / f"{name}.pem")),
        ("/etc/ssl/private/api.example.edu.key", 1, str(folder / f"{name}.key")),
        ("server 127.0.0.1:6543;", 1, f"server 127.0.0.1:{gateway_port};"),
        ("listen 127.0.0.1:8090;", 1, f"listen 127.0.0.1:{publish_port};"),
    ]:
        assert text.count(line) == count, f"{SHIPPED} no longer has {line!r} {count} time(s)"
        text = text.replace(line, replacement)
    (folder / "lms_api.conf").write_text(text)
    # nginx as this user, in the foreground, everything it writes in the test's folder; nchan loaded as Debian's
    # modules-enabled/50-mod-nchan.conf loads it.
    (folder / "nginx.conf").write_text(
        f"""
load_module {NCHAN_MODULE};
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/lms_api.conf;
}}
"""
    )
    return folder / "nginx.conf"


def start_nginx(folder, config, port):
    """nginx run from ``folder`` with ``config``, listening on ``port``."""
    for needed, package in ((NGINX, "nginx-light"), (NCHAN_MODULE, "libnginx-mod-nchan")):
        if not Path(needed).exists():
            pytest.fail(f"{needed} is missing: these tests run Debian's nginx with nchan (apt install {package})")
    with open(folder / "error.log", "a") as error_log:  # what nginx says before it reads its configuration
        nginx = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=error_log,
        )
    try:
        wait_for_port(port, nginx)
    except AssertionError:
        pytest.fail(f"nginx did not start: {(folder / 'error.log').read_text()}")
    return nginx


def stop_nginx(nginx, folder):
    nginx.send_signal(signal.SIGQUIT)
    try:
        nginx.wait(10)
    except subprocess.TimeoutExpired:
        nginx.kill()
        nginx.wait()
    shutil.rmtree(folder / "client_body", ignore_errors=True)
