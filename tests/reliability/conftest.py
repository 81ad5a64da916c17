import sys
from pathlib import Path

# Appended, not prepended: `from conftest import ...` elsewhere must keep finding tests/conftest.py.
sys.path.append(str(Path(__file__).resolve().parent))

import pytest  # noqa: E402


@pytest.fixture
def make_app(tokenizer):
    from serverkit import build_app

    return lambda *memories, **settings: build_app(tokenizer, memories or ("bank", "recurrent"), **settings)
