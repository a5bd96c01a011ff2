"""An event engine that records what is published and the streams asked for, for tests that swap it in
(``gateway.router.registry.events = RecordingEvents()``)."""

from pyramid.response import Response


class RecordingEvents:
    name = "embedded"

    def __init__(self):
        self.published = []  # (channel, type, data)
        self.streams = []  # the channels of each stream asked for

    def publish(self, channel, event_type, data):
        self.published.append((channel, str(event_type), dict(data)))
        return True

    def stream(self, request, channels):
        self.streams.append(tuple(channels))
        return Response(b": opened\n\n", content_type="text/event-stream")

    def open_streams(self):
        return 0

    def readiness(self):
        return {"engine": "recording"}

    def close(self):
        pass

    def of_type(self, event_type):
        return [(channel, data) for channel, kind, data in self.published if kind == event_type]
