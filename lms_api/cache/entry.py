"""One entry of the read cache, and how Redis keeps it: a header line, then Moodle's answer as Moodle sent it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Generation(NamedTuple):
    """A group's generation as a store read it: the ``value`` of its counter, and the store's ``epoch`` of the moment.

    A store with Redis counts in Redis while it answers and in the process while it does not; each change begins an
    epoch, so an answer fetched under one counter is never kept, nor served, under the other, whatever their values.
    """

    epoch: int
    value: int


@dataclass(frozen=True)
class Entry:
    generation: Generation  # the group's generation the answer was fetched under
    body: bytes  # Moodle's answer as JSON
    fresh_until: float  # wall-clock seconds, comparable across replicas
    stale_until: float

    def encode(self) -> bytes:
        """As Redis keeps it."""
        return str(self.generation.value).encode() + self.encode_after_generation()

    def encode_after_generation(self) -> bytes:
        """As Redis keeps it, but the generation it begins with: the script that stores it decides that."""
        return f" {self.fresh_until} {self.stale_until}\n".encode() + self.body

    @classmethod
    def decode(cls, raw: bytes, epoch: int) -> Entry:
        header, _, body = raw.partition(b"\n")
        generation, fresh_until, stale_until = header.split()
        return cls(Generation(epoch, int(generation)), body, float(fresh_until), float(stale_until))
