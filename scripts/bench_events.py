"""Event streams held by nginx with nchan: many subscribers, the gateway's threads free, and how long one webhook takes
to reach the last of them.

nginx runs the shipped configuration (deploy/nginx/lms_api.conf, rendered for free ports as the tests render it, one
worker process) in front of `pserve production.ini` with `NCHAN_PUBLISH_URL`, and the sandbox as Moodle. For each
`--subscribers` count, that many EventSource streams are opened over HTTPS (HTTP/1.1, one connection each), all of
the same Moodle user, each with a ticket of its own redeemed by the gateway; nginx then holds them all. Printed:

- the subscribers nchan holds (its stub status) and the gateway's open files, before and with the streams open;
- `GET /healthz` through nginx, p50/p99 over `--probes` requests, with no stream open and with all of them open:
  the gateway's waitress threads are free while nginx holds the streams;
- over `--rounds` webhooks (`\\core\\event\\notification_sent` for that user, a Moodle call for the unread count,
  one publish), the time from sending the webhook to the event at the last subscriber, p50 and max, and the median
  subscriber's time.

The subscribers are read by one asyncio loop in this process, on the same machine: reading and decrypting every
stream's copy is part of the time to the last one, so that figure is an upper bound of nginx's.

    .venv/bin/python scripts/bench_events.py [--subscribers 1000 4000] [--rounds 7] [--probes 300]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from benchlib import JWT_SECRET, ROOT, documented_parser, free_port, positive, sandbox_and_gateway, wait_for

sys.path.insert(0, str(ROOT))  # the tests' helpers render the shipped nginx file and sign tokens
from tests.support.credentials import mint, self_signed_certificate
from tests.support.nginx import PUBLISH_PATH, STATUS_PATH, render, start_nginx, stop_nginx

WEBHOOK_SECRET = "bench-webhook-secret-" + "w" * 40
NAME = "localhost"
USERID = 3
SENDER = 2
NOTIFICATION = b"event: notification"
UNLIMITED = "1000000/minute"


@dataclass
class Subscriber:
    """One stream's arrival times, one per notification seen."""

    arrivals: list[float] = field(default_factory=list)


async def open_stream(url: str, context: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=context, limit=1 << 16)
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    )
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"a stream was refused: {head.decode(errors='replace')}")
    return reader, writer


async def listen(reader: asyncio.StreamReader, subscriber: Subscriber) -> None:
    while chunk := await reader.read(4096):
        now = time.monotonic()
        subscriber.arrivals.extend([now] * chunk.count(NOTIFICATION))


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def probe_healthz(base: str, certificate: Path, probes: int) -> tuple[float, float]:
    """p50 and p99 of GET /healthz through nginx, in milliseconds, on one keep-alive connection."""
    with requests.Session() as session:
        session.verify = str(certificate)
        session.trust_env = False
        for _ in range(10):  # the connection and the gateway's first answers, not measured
            session.get(f"{base}/healthz", timeout=10)
        times = []
        for _ in range(probes):
            started = time.perf_counter()
            answer = session.get(f"{base}/healthz", timeout=10)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, answer.text
    return statistics.median(times), percentile(times, 0.99)


def tickets(base: str, certificate: Path, count: int) -> list[str]:
    """``count`` stream URLs, each with a ticket of its own, asked by eight callers at once."""
    token = mint("events:read", secret=JWT_SECRET, sub="bench-events", moodle_userid=USERID)
    local = threading.local()

    def one(_: int) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.verify = str(certificate)
            local.session.trust_env = False
        answer = local.session.post(
            f"{base}/api/moodle/events/tickets", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        url: str = answer.json()["data"]["stream_url"]
        return url

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def held_by_nchan(publish_port: int) -> int:
    text = requests.get(f"http://127.0.0.1:{publish_port}{STATUS_PATH}", timeout=5).text
    return int(next(line for line in text.splitlines() if line.startswith("subscribers:")).split(":")[1])


def notify(base: str, certificate: Path, objectid: int) -> float:
    """Moodle's webhook for a notification to the user; answers when it was sent."""
    form = {
        "eventname": "\\core\\event\\notification_sent",
        "relateduserid": str(USERID),
        "userid": str(SENDER),
        "objectid": str(objectid),
        "timecreated": str(int(time.time())),
    }
    sent = time.monotonic()
    answer = requests.post(
        f"{base}/api/moodle/webhooks/moodle",
        data=form,
        headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
        verify=str(certificate),
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["data"]["handled"], answer.text
    return sent


async def measure(
    count: int, base: str, certificate: Path, publish_port: int, gateway_pid: int, rounds: int, probes: int
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=certificate)
    fds_before = len(os.listdir(f"/proc/{gateway_pid}/fd"))
    healthz_idle = await loop.run_in_executor(None, probe_healthz, base, certificate, probes)
    started = time.monotonic()
    urls = await loop.run_in_executor(None, tickets, base, certificate, count)
    ticketed = time.monotonic() - started
    streams = []
    subscribers = [Subscriber() for _ in range(count)]
    for batch in range(0, count, 200):  # TLS handshakes, 200 at a time
        streams += await asyncio.gather(*(open_stream(url, context) for url in urls[batch : batch + 200]))
    opened = time.monotonic() - started - ticketed
    listeners = [asyncio.create_task(listen(r, s)) for (r, _), s in zip(streams, subscribers, strict=True)]
    while (held := await loop.run_in_executor(None, held_by_nchan, publish_port)) < count:
        await asyncio.sleep(0.1)
    fds_held = len(os.listdir(f"/proc/{gateway_pid}/fd"))
    healthz_held = await loop.run_in_executor(None, probe_healthz, base, certificate, probes)
    last, median = [], []
    for round_number in range(rounds):
        sent = await loop.run_in_executor(None, notify, base, certificate, count * 1000 + round_number)
        deadline = time.monotonic() + 30
        while any(len(s.arrivals) <= round_number for s in subscribers):
            if time.monotonic() > deadline:
                raise SystemExit(f"round {round_number}: not every subscriber heard the event within 30 s")
            await asyncio.sleep(0.002)
        delays = [s.arrivals[round_number] - sent for s in subscribers]
        last.append(max(delays) * 1000)
        median.append(statistics.median(delays) * 1000)
        await asyncio.sleep(0.3)
    for _, writer in streams:
        writer.close()
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    return {
        "subscribers": count,
        "held by nchan": held,
        "tickets (s)": round(ticketed, 1),
        "streams opened (s)": round(opened, 1),
        "gateway open files, idle -> streams held": f"{fds_before} -> {fds_held}",
        "/healthz p50/p99 ms, no stream": "{:.2f} / {:.2f}".format(*healthz_idle),
        "/healthz p50/p99 ms, streams held": "{:.2f} / {:.2f}".format(*healthz_held),
        "webhook -> last subscriber ms, p50 / max": f"{statistics.median(last):.0f} / {max(last):.0f}",
        "webhook -> median subscriber ms, p50": f"{statistics.median(median):.0f}",
    }


def main() -> None:
    parser = documented_parser(__doc__)
    parser.add_argument("--subscribers", type=positive, nargs="+", default=[1000, 4000])
    parser.add_argument("--rounds", type=positive, default=7)
    parser.add_argument("--probes", type=positive, default=300)
    options = parser.parse_args()
    # One file per stream here, and two in nginx (which inherits the limit): as many as the system lets this user.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(options.subscribers) + 1000
    if hard < needed:
        raise SystemExit(f"open files are limited to {hard}: {needed} are needed (raise the hard limit, ulimit -Hn)")
    publish_port, https_port = free_port(), free_port()
    with (
        tempfile.TemporaryDirectory() as folder_name,
        sandbox_and_gateway(
            NCHAN_PUBLISH_URL=f"http://127.0.0.1:{publish_port}{PUBLISH_PATH}",
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            TRUSTED_PROXIES="127.0.0.1/32",
            RATE_LIMIT_READ=UNLIMITED,
            RATE_LIMIT_WRITE=UNLIMITED,
            RATE_LIMIT_UNAUTHENTICATED=UNLIMITED,
        ) as running,
    ):
        folder = Path(folder_name)
        certificate, _ = self_signed_certificate(folder, NAME)
        config = render(
            folder, https_port, free_port(), running.gateway_port, publish_port, name=NAME, worker_connections=needed
        )
        nginx = start_nginx(folder, config, https_port)
        try:
            wait_for(publish_port)
            base = f"https://{NAME}:{https_port}"
            results = [
                asyncio.run(
                    measure(
                        count,
                        base,
                        certificate,
                        publish_port,
                        running.gateway_pid,
                        options.rounds,
                        options.probes,
                    )
                )
                for count in options.subscribers
            ]
        finally:
            stop_nginx(nginx, folder)
    print(json.dumps(results, indent=2))
    print(f"(gateway: pserve production.ini, 128 waitress threads; nginx: one process; {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
