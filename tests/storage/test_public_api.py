"""Everything `storage` promises in __all__ exists, and nothing else leaks as public."""

from __future__ import annotations

import storage
import tusd_py


def test_storage_all_is_importable_and_sorted() -> None:
    assert storage.__all__ == sorted(storage.__all__)
    for name in storage.__all__:
        assert hasattr(storage, name), name


def test_tusd_py_all_is_importable() -> None:
    assert set(tusd_py.__all__) == {"Settings", "TusError", "create_app"}
    for name in tusd_py.__all__:
        assert hasattr(tusd_py, name), name
