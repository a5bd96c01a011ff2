"""The ``lms-api`` command: mint a development JWT, run the background jobs' worker, or run the Moodle sandbox alone."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from lms_api.security import Scope, TokenVerifier, scope_tokens
from lms_api.settings import DEVELOPMENT, SettingsError, load_settings, read_dotenv


def _scopes(value: str) -> list[str]:
    scopes = scope_tokens(value)  # as the gateway reads them: a tab or another space is part of a scope
    known = {scope.value for scope in Scope}
    unknown = [scope for scope in scopes if scope not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return scopes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lms-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    token = commands.add_parser("token", help="print a JWT signed with the configured JWT_SECRET")
    token.add_argument("--sub", required=True, help="who the token stands for")
    token.add_argument(
        "--scope", type=_scopes, default=[], help='space-separated scopes, e.g. "siteinfo:read courses:read"'
    )
    token.add_argument("--moodle-userid", type=int, help="the caller's Moodle user id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    worker = commands.add_parser("worker", help="run background jobs queued in Redis (JOBS_ENGINE=rq)")
    worker.add_argument(
        "--ini",
        default="production.ini",
        help="the gateway's ini file, read as pserve reads it (default production.ini)",
    )
    worker.add_argument("--name", help="the worker's name in RQ (default: RQ's, unique)")
    worker.add_argument("--burst", action="store_true", help="run the jobs queued, then exit (to drain the queue)")

    sandbox = commands.add_parser("sandbox", help="run the Moodle sandbox alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8089)
    sandbox.add_argument(
        "--token", default=os.environ.get("SANDBOX_TOKEN"), help="web-service token (default: random, printed)"
    )
    sandbox.add_argument("--latency-ms", type=float, default=0.0, help="added to every web-service call")
    sandbox.add_argument("--fault-rate", type=float, default=0.0, help="share of calls (0..1) that get --fault")
    # The sandbox checks --fault and defaults --max-input-vars itself: `lms-api token` must not import it.
    sandbox.add_argument("--fault", default="reset", help="fault injected at --fault-rate (default: reset)")
    sandbox.add_argument("--max-input-vars", type=int, help="PHP max_input_vars (default: 5000, Moodle's minimum)")
    sandbox.add_argument(
        "--no-upload-files", action="store_true", help="the service does not allow uploads (upload.php refuses)"
    )
    sandbox.add_argument("--max-bytes", type=int, default=0, help="the site's maximum upload size (0: unlimited)")
    sandbox.add_argument("--functions", help="comma-separated functions of the token's service (default: all)")
    sandbox.add_argument("--debug", action="store_true", help="answer errors with debuginfo, like Moodle's debug mode")
    sandbox.add_argument(
        "--webhook-url",
        help="post the Moodle events of the sandbox's writes there, as Moodle's Event Trigger plugin would "
        "(a gateway's http://HOST:PORT/api/moodle/webhooks/moodle); default: none posted",
    )
    sandbox.add_argument(
        "--webhook-secret",
        default=os.environ.get("WEBHOOK_SECRET"),
        help="sent as Authorization: Bearer with each event (default: WEBHOOK_SECRET)",
    )
    return parser


def _mint(args: argparse.Namespace) -> int:
    environ = {**read_dotenv(None), **os.environ}
    try:
        settings = load_settings({"lms_api.environment": DEVELOPMENT}, environ)
    except SettingsError as error:
        for problem in error.problems:
            print(f"lms-api: configuration error: {problem}", file=sys.stderr)
        return 2
    if settings.uses_development_jwt_secret:
        print("lms-api: JWT_SECRET is unset: signing with the development secret", file=sys.stderr)
    verifier = TokenVerifier.from_settings(settings)
    if not verifier.can_mint:
        print("lms-api: tokens can only be signed with JWT_SECRET and an HS* algorithm", file=sys.stderr)
        return 2
    print(verifier.mint(args.sub, args.scope, args.moodle_userid, args.ttl))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pyramid.paster import get_appsettings

    ini = os.path.abspath(args.ini)
    if not os.path.isfile(ini):
        print(f"lms-api: no ini file {ini}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(get_appsettings(ini), os.environ, read_dotenv(os.path.dirname(ini)))
    except SettingsError as error:
        for problem in error.problems:
            print(f"lms-api: configuration error: {problem}", file=sys.stderr)
        return 2
    if settings.jobs_engine != "rq" or not settings.moodle_base_url or not settings.moodle_token:
        print("lms-api: the worker needs JOBS_ENGINE=rq, MOODLE_BASE_URL and MOODLE_TOKEN", file=sys.stderr)
        return 2
    import redis

    from lms_api.cache import ReadCache
    from lms_api.cache.cachedmoodle import CachedMoodle
    from lms_api.events import engine_from_settings
    from lms_api.jobqueue import WorkerContext, serve
    from lms_api.logging import configure_logging
    from lms_api.moodle.client import MoodleClient

    configure_logging(settings.log_format, settings.secrets)
    assert settings.redis_url is not None  # load_settings refuses JOBS_ENGINE=rq without it
    client = MoodleClient.from_settings(settings, settings.moodle_base_url, settings.moodle_token)
    # Through the read cache the replicas share in Redis, as a request's write: a job's writes drop what they change.
    events = engine_from_settings(settings)  # the writes' events and the jobs' progress reach the streams
    moodle = CachedMoodle(client, ReadCache.from_settings(settings), refresh=True, events=events)
    # The job's records: a stalled Redis must not hold a job for long (RQ's own blocking reads get a client of theirs).
    records = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    serve(WorkerContext(settings, records, moodle, events), args.name, burst=args.burst)
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    # Imported here: the gateway never depends on its emulator, only this command runs it.
    from moodle_sandbox.server import FAULT_KINDS, build_sandbox

    if args.fault not in FAULT_KINDS:
        print(f"lms-api: --fault must be one of {', '.join(FAULT_KINDS)}", file=sys.stderr)
        return 2
    if args.webhook_url and not args.webhook_secret:
        print(
            "lms-api: --webhook-url needs --webhook-secret (or WEBHOOK_SECRET), the secret the gateway checks",
            file=sys.stderr,
        )
        return 2
    functions = [name.strip() for name in args.functions.split(",") if name.strip()] if args.functions else None
    options = {} if args.max_input_vars is None else {"max_input_vars": args.max_input_vars}
    if args.webhook_url:
        options |= {"events_url": args.webhook_url, "events_secret": args.webhook_secret}
    try:
        server = build_sandbox(
            args.host,
            args.port,
            token=args.token,
            service_functions=functions,
            debug=args.debug,
            max_bytes=args.max_bytes,
            upload_files=not args.no_upload_files,
            latency_ms=args.latency_ms,
            fault_rate=args.fault_rate,
            random_fault=args.fault,
            **options,
        )
    except OSError as error:  # as pserve says it (lms_api.server.listen): one line, status 2, no traceback
        reason = "the port is already in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        print(f"lms-api: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 2
    print(f"Moodle sandbox on {server.url}  token: {server.site.token}", flush=True)
    if args.webhook_url:
        print(f"Posting its Moodle events to {args.webhook_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"token": _mint, "worker": _worker, "sandbox": _sandbox}
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
