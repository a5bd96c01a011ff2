"""Time in tests: clocks that move when told to, and waits that fail rather than hang."""

import time


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class FakeTime:
    """A clock that runs with real time plus every sleep taken on it; a sleep returns at once."""

    def __init__(self):
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)

    def clock(self):
        return time.monotonic() + sum(self.slept)


def join(threads):
    """Wait for ``threads`` to end; fail if one is still running after 10 s."""
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def eventually(condition, what, seconds=5.0):
    """Wait until ``condition()`` holds; fail naming ``what`` if it has not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.005)
