"""The key files a key Secret holds, as the operator writes them and the runtime reads them.

A key Secret mounted as a directory has one file per key, ``key-<id>`` (32 raw bytes: AES-256), and
``active``, naming the id new artifacts are encrypted with (docs/runtime-contract.md §3).
"""

from __future__ import annotations

import re
from typing import Final

KEY_BYTES: Final = 32
KEY_FILE_PREFIX: Final = "key-"
ACTIVE_FILE: Final = "active"
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
