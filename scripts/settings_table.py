"""Print README's configuration table from the one declaration of the settings, ``lms_api.settings.Settings``;
``--write`` puts it in README.md between its markers. A test fails when README holds anything else there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lms_api.settings import KEYS

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- settings table: printed by scripts/settings_table.py from lms_api.settings.Settings -->"
END = "<!-- end of settings table -->"


def table() -> str:
    rows = [f"| `{name}` | {key.shown_default} | {key.meaning} |" for name, key in KEYS.items()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|", *rows])


def readme_with_table(readme: str) -> str:
    before, rest = readme.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{table()}\n{END}{after}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the configuration table in README.md")
    args = parser.parse_args()
    if args.write:
        README.write_text(readme_with_table(README.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
