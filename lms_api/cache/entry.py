"""One entry of the read cache, and how Redis keeps it: a header line, then Moodle's answer as Moodle sent it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

TIME_WIDTH = 17  # wall-clock seconds to the microsecond, zero-padded: 10 digits until the year 2286


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

    @cached_property
    def digest(self) -> str:
        """The answer's digest, kept in the header: Redis compares answers by it, without reading them."""
        return hashlib.blake2b(self.body, digest_size=16).hexdigest()

    def times(self) -> str:
        """The header's times, always as long: a renewal writes them over the kept ones, in place."""
        return f" {self.fresh_until:0{TIME_WIDTH}.6f} {self.stale_until:0{TIME_WIDTH}.6f}"

    def encode(self) -> bytes:
        """As Redis keeps it."""
        return str(self.generation.value).encode() + self.encode_after_generation()

    def encode_after_generation(self) -> bytes:
        """As Redis keeps it, but the generation it begins with: the script that stores it decides that."""
        return f"{self.times()} {self.digest}\n".encode() + self.body

    @classmethod
    def decode(cls, raw: bytes, epoch: int) -> Entry:
        header, _, body = raw.partition(b"\n")
        generation, fresh_until, stale_until, *_ = header.split()
        return cls(Generation(epoch, int(generation)), body, float(fresh_until), float(stale_until))
