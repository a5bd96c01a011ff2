"""Where the tests find the repository and what is recorded in it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
GOLDEN_DIR = ROOT / "tests" / "moodle_golden"  # answers recorded from a real Moodle 5.0
