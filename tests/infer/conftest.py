"""The infer tests' data module (infer_data); their model fixtures (smol_dir, tiny_dir, ...) are in tests/conftest.py,
shared with tests/serve and tests/reliability."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # for infer_data, before pytest adds this folder
