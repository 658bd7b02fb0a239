"""Make tests/harness importable as `harness` (tests directories are not packages)."""

import sys
from pathlib import Path

TESTS_ROOT = str(Path(__file__).resolve().parents[2])
if TESTS_ROOT not in sys.path:
    sys.path.insert(0, TESTS_ROOT)
