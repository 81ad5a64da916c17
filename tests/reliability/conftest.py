import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402


@pytest.fixture
def make_app(tokenizer):
    from serverkit import build_app

    return lambda *memories, **settings: build_app(tokenizer, memories or ("bank", "recurrent"), **settings)
