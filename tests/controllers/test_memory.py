"""The thread that hands a burst's freed heap pages back to the system."""

from __future__ import annotations

import ctypes.util
import time

import pytest

from kubemaas.controllers import memory


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library found")
def test_the_trimmer_runs_in_the_background_and_survives_its_calls() -> None:
    thread = memory.trim_periodically(interval=0.01)
    if thread is None:
        pytest.skip("this C library has no malloc_trim")
    time.sleep(0.1)  # several malloc_trim(0) calls
    assert thread.is_alive() and thread.daemon and thread.name == "malloc-trim"
