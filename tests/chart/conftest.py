"""Fixtures of the chart tests: the chart's values and their schema, as committed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.chart.builders import CHART


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded
