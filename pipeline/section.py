"""The base of every params section: unknown keys and non-finite numbers are refused at load.

Kept apart from :mod:`pipeline.config` so that each domain (text, training, evaluation, feedback)
can define its own sections next to its code and ``Params`` can gather them without import cycles.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_RE = r"^[a-z][a-z0-9_]*$"


class Section(BaseModel):
    # allow_inf_nan=False: a `nan` weight or `inf` lr is a typo, never a setting
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
