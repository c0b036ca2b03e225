"""tests/defense/plain.py (the published objectives written out) is imported as ``plain``."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
