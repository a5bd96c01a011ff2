"""Two gateway processes behind one Redis enforce one rate-limit budget together and share one read cache, whose hits
each replica answers from its process with no Redis round trip but its rate limit's."""

import threading
import time
import uuid

import redis
import requests

from tests.support.credentials import mint
from tests.support.processes import clean_env, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

SECRET = "replica-secret-" + "r" * 40


def test_two_gateway_processes_share_one_budget(spawn, standalone_sandbox, redis_url):
    env = clean_env(
        MOODLE_BASE_URL=standalone_sandbox("replica-token"),
        MOODLE_TOKEN="replica-token",
        JWT_SECRET=SECRET,
        REDIS_URL=redis_url,
        RATE_LIMIT_READ="5/minute",
    )
    ports = [free_port(), free_port()]
    for port in ports:
        wait_for_port(port, spawn("pserve", "production.ini", f"http_port={port}", env=env))
    token = mint("siteinfo:read", secret=SECRET, sub=f"replica-{uuid.uuid4().hex}")

    statuses = [
        requests.get(
            f"http://127.0.0.1:{ports[n % 2]}/api/moodle/siteinfo",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).status_code
        for n in range(8)
    ]

    assert statuses == [200] * 5 + [429] * 3


def sandbox_calls(moodle, token, function):
    response = requests.get(f"{moodle}/__sandbox__/calls", headers={"X-Sandbox-Token": token}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["calls"].get(function, 0)


def test_two_gateway_processes_share_one_read_cache_and_see_each_others_writes(spawn, standalone_sandbox, own_redis):
    _, redis_url = own_redis  # of this test's own: entries other tests left in a shared Redis would be hits here
    moodle = standalone_sandbox("cache-token")
    env = clean_env(MOODLE_BASE_URL=moodle, MOODLE_TOKEN="cache-token", JWT_SECRET=SECRET, REDIS_URL=redis_url)
    ports = [free_port(), free_port()]
    replicas = [spawn("pserve", "production.ini", f"http_port={port}", env=env) for port in ports]
    for port, replica in zip(ports, replicas, strict=True):
        wait_for_port(port, replica)
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=20)  # the site info is known
        assert (ready.status_code, ready.json()["data"]["cache"]) == (200, "redis"), ready.text
    a, b = (f"http://127.0.0.1:{port}/api/moodle" for port in ports)
    headers = {"Authorization": "Bearer " + mint("courses:read courses:write", secret=SECRET, sub="cache-replicas")}

    def read(url):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["Cache-Status"], response.json()["data"]

    def listed(data):
        return {course["id"]: course["fullname"] for course in data["courses"]}

    def lists_sent():
        return sandbox_calls(moodle, "cache-token", "core_course_get_courses")

    sent = lists_sent()
    status_a, list_a = read(f"{a}/courses")
    status_b, list_b = read(f"{b}/courses")
    assert status_a == "lms_api; fwd=uri-miss; stored"
    assert status_b.startswith("lms_api; hit; ttl=")
    assert list_b == list_a
    assert lists_sent() == sent + 1, "replica B answered from the entry replica A stored"
    assert read(f"{a}/courses/2")[0] == "lms_api; fwd=uri-miss; stored"
    assert read(f"{b}/courses/2")[0].startswith("lms_api; hit; ttl=")

    renamed = f"Intro to Python {uuid.uuid4().hex[:6]}"
    patched = requests.patch(f"{b}/courses/2", json={"fullname": renamed}, headers=headers, timeout=10)
    assert patched.status_code == 200, patched.text
    status_a, course_a = read(f"{a}/courses/2")
    # What B read back once its write had dropped the courses, kept in Redis: never A's entry from before the write.
    assert (status_a.startswith("lms_api; hit; ttl="), course_a["fullname"]) == (True, renamed), "no stale hit on A"
    status_a, list_a = read(f"{a}/courses")
    assert (status_a, listed(list_a)[2]) == ("lms_api; fwd=uri-miss; stored", renamed)
    assert lists_sent() == sent + 2

    shortname = f"REPL{uuid.uuid4().hex[:8]}"
    created = requests.post(
        f"{a}/courses",
        json={"fullname": "Shared cache", "shortname": shortname, "categoryid": 1},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    status_b, list_b = read(f"{b}/courses")
    assert status_b == "lms_api; fwd=uri-miss; stored"
    assert listed(list_b)[created.json()["data"]["id"]] == "Shared cache"
    assert lists_sent() == sent + 3


class RedisCommands:
    """The commands Redis receives from its clients (not those its scripts run), as MONITOR shows them, in a thread."""

    def __init__(self, url):
        self.lines = []
        self._monitor = redis.Redis.from_url(url).monitor().__enter__()  # MONITOR sent, and its OK read
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        try:
            for command in self._monitor.listen():
                if command["client_type"] != "lua":
                    self.lines.append(command["command"])
        except (redis.RedisError, OSError, ValueError):
            return  # its connection closed at the end of the test

    def naming(self, since, *words):
        """The commands received since ``since`` lines that name any of ``words`` (a key, or part of one)."""
        return [line for line in self.lines[since:] if any(word in line for word in words)]

    def close(self):
        self._monitor.connection.disconnect()


def test_a_replica_answers_a_hit_from_its_process_until_a_write_on_another_replica(
    spawn, standalone_sandbox, own_redis
):
    _, redis_url = own_redis
    moodle = standalone_sandbox("near-token")
    env = clean_env(MOODLE_BASE_URL=moodle, MOODLE_TOKEN="near-token", JWT_SECRET=SECRET, REDIS_URL=redis_url)
    ports = [free_port(), free_port()]
    for port in ports:
        wait_for_port(port, spawn("pserve", "production.ini", f"http_port={port}", env=env))
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=20).status_code == 200
    a, b = (f"http://127.0.0.1:{port}/api/moodle/courses/2" for port in ports)
    headers = {"Authorization": "Bearer " + mint("courses:read courses:write", secret=SECRET, sub="near-copies")}

    def read(url):
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["Cache-Status"], response.json()["data"]["fullname"]

    read(a)
    read(b)  # B keeps the entry A stored near from now
    commands = RedisCommands(redis_url)
    try:
        since = len(commands.lines)
        status, before = read(b)
        # Its rate limit's count, and any key of the courses (not the site info's, which the refresher may read).
        of_this_read = ("near-copies", "lms_api:cache:courses", "generation:courses")
        eventually(lambda: commands.naming(since, *of_this_read), "B's round trip seen by MONITOR")
        time.sleep(0.2)  # any other command of B's read would be seen by now
        (only,) = commands.naming(since, *of_this_read)
        assert status.startswith("lms_api; hit; ttl=") and only.startswith("EVALSHA ")
        assert "lms_api:cache:generation:courses" in only

        renamed = f"Near copies {uuid.uuid4().hex[:6]}"
        patched = requests.patch(a, json={"fullname": renamed}, headers=headers, timeout=10)
        assert patched.status_code == 200, patched.text

        status, after = read(b)
        # What A read back once its write had moved the courses on, from Redis: never B's copy from before the write.
        assert (status.startswith("lms_api; hit; ttl="), before != renamed, after) == (True, True, renamed)
    finally:
        commands.close()
