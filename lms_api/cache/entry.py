"""One entry of the read cache, and how Redis keeps it: a header line, then Moodle's answer as Moodle sent it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    generation: int  # the group's generation the answer was fetched under
    body: bytes  # Moodle's answer as JSON
    fresh_until: float  # wall-clock seconds, comparable across replicas
    stale_until: float

    def encode(self) -> bytes:
        return f"{self.generation} {self.fresh_until} {self.stale_until}\n".encode() + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        header, _, body = raw.partition(b"\n")
        generation, fresh_until, stale_until = header.split()
        return cls(int(generation), body, float(fresh_until), float(stale_until))
