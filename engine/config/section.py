"""The base of every preset section: unknown keys refused, field docstrings as help text, and
the checks every value gets (no booleans for numbers, no control characters in text)."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from engine.core.terminal_text import first_unprintable


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_input(cls, value: object, info: ValidationInfo) -> object:
        # Python counts True as 1: `max_steps: true` would quietly mean one step.
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _numeric(annotation) and not _numeric(annotation, bool):
                raise PydanticCustomError("bool_not_number", "must be a number, not true or false")
        # Preset text reaches the screen and log.txt: an escape code there would be obeyed.
        for text in value if isinstance(value, list) else [value]:
            found = first_unprintable(text) if isinstance(text, str) else None
            if found:
                raise PydanticCustomError(
                    "control_character",
                    "holds a control character ({escape} at character {index}); remove it",
                    {"escape": found[1], "index": found[0] + 1},
                )
        return value


def _numeric(annotation: object, *kinds: type) -> bool:
    """Whether a field's type (``int | None``, ``int | Literal["auto"]``...) includes one of
    ``kinds`` (default: int or float)."""
    if annotation in (kinds or (int, float)):
        return True
    return any(_numeric(arg, *kinds) for arg in get_args(annotation))
