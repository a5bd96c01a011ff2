"""Print the parts of README.md that are printed from the code: the error catalogue, from the one table of codes
(``lms_api.errors.ErrorCode``), the configuration table, from the one declaration of the settings
(``lms_api.settings.Settings``), and what each Moodle event does, from the webhook's table
(``lms_api.webhooks.EVENTS``). ``--write`` puts each in README.md between its markers; a test fails when README
holds anything else there."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lms_api.errors import UNKNOWN_MOODLE_ERROR_STATUS, ErrorCode
from lms_api.settings import KEYS
from lms_api.webhooks import readme_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def catalogue() -> str:
    own = [code for code in ErrorCode if not code.from_moodle]
    moodle = [code for code in ErrorCode if code.from_moodle]
    lines = ["The gateway's own codes:", "", *_codes_table(own), ""]
    lines += ["Moodle's errorcodes, passed on as Moodle names them:", "", *_codes_table(moodle)]
    lines.append(
        f"| {UNKNOWN_MOODLE_ERROR_STATUS} | any other | any other Moodle errorcode (e.g. `dmlwriteexception`); "
        "`wsaccessuser*` codes are 403 |"
    )
    return "\n".join(lines)


def _codes_table(codes: list[ErrorCode]) -> list[str]:
    rows = [f"| {code.status} | `{code.value}` | {code.meaning} |" for code in sorted(codes, key=lambda c: c.status)]
    return ["| status | code | when |", "|---|---|---|", *rows]


def settings_table() -> str:
    rows = [f"| `{name}` | {key.shown_default} | {key.meaning} |" for name, key in KEYS.items()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


@dataclass(frozen=True)
class Printed:
    """A part of README between two markers, and what prints it."""

    begin: str
    end: str
    text: Callable[[], str]

    def in_readme(self, readme: str) -> str:
        before, rest = readme.split(self.begin, 1)
        _, after = rest.split(self.end, 1)
        return f"{before}{self.begin}\n{self.text()}\n{self.end}{after}"


ERROR_CATALOGUE = Printed(
    "<!-- error catalogue: printed by scripts/readme_tables.py from lms_api.errors.ErrorCode -->",
    "<!-- end of error catalogue -->",
    catalogue,
)
SETTINGS_TABLE = Printed(
    "<!-- settings table: printed by scripts/readme_tables.py from lms_api.settings.Settings -->",
    "<!-- end of settings table -->",
    settings_table,
)
EVENTS_TABLE = Printed(
    "<!-- events table: printed by scripts/readme_tables.py from lms_api.webhooks.EVENTS -->",
    "<!-- end of events table -->",
    readme_rows,
)
PRINTED = (ERROR_CATALOGUE, SETTINGS_TABLE, EVENTS_TABLE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite them in README.md")
    args = parser.parse_args()
    if args.write:
        readme = README.read_text()
        for part in PRINTED:
            readme = part.in_readme(readme)
        README.write_text(readme)
    else:
        print("\n\n".join(part.text() for part in PRINTED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
