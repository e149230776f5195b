from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    """The app's functions by name; ``get_functions`` indexes the app and may be called only once."""
    import function_app

    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}
