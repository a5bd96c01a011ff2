"""The web-service functions the sandbox knows, registered by name with Moodle's parameter description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moodle_sandbox.params import Single

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite


SandboxRun = Callable[["SandboxSite", dict[str, Any]], Any]


@dataclass(frozen=True)
class SandboxFunction:
    name: str
    params: Single
    run: SandboxRun


FUNCTIONS: dict[str, SandboxFunction] = {}


def sandbox_function(name: str, params: Single) -> Callable[[SandboxRun], SandboxRun]:
    """Register ``run(site, params)`` as web-service function ``name``; ``params`` are validated before it runs."""

    def register(run: SandboxRun) -> SandboxRun:
        FUNCTIONS[name] = SandboxFunction(name, params, run)
        return run

    return register
