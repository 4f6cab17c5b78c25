"""Field types shared by a job's request and its chain steps."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
