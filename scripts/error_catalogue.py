"""Print README's error catalogue from the one table of codes, ``lms_api.errors.ErrorCode``; ``--write`` puts it in
README.md between its markers. A test fails when README holds anything else there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lms_api.errors import UNKNOWN_MOODLE_ERROR_STATUS, ErrorCode

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- error catalogue: printed by scripts/error_catalogue.py from lms_api.errors.ErrorCode -->"
END = "<!-- end of error catalogue -->"


def catalogue() -> str:
    own = [code for code in ErrorCode if not code.from_moodle]
    moodle = [code for code in ErrorCode if code.from_moodle]
    lines = ["The gateway's own codes:", "", *_table(own), ""]
    lines += ["Moodle's errorcodes, passed on as Moodle names them:", "", *_table(moodle)]
    lines.append(
        f"| {UNKNOWN_MOODLE_ERROR_STATUS} | any other | any other Moodle errorcode (e.g. `dmlwriteexception`); "
        "`wsaccessuser*` codes are 403 |"
    )
    return "\n".join(lines)


def _table(codes: list[ErrorCode]) -> list[str]:
    rows = [f"| {code.status} | `{code.value}` | {code.meaning} |" for code in sorted(codes, key=lambda c: c.status)]
    return ["| status | code | when |", "|---|---|---|", *rows]


def readme_with_catalogue(readme: str) -> str:
    before, rest = readme.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{catalogue()}\n{END}{after}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the catalogue in README.md")
    args = parser.parse_args()
    if args.write:
        README.write_text(readme_with_catalogue(README.read_text()))
    else:
        print(catalogue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
