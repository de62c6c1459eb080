"""Record contracts: one pydantic model per source, and the warehouse table its rows load into.

Shared choices for every source:

- Extra fields are IGNORED, not forbidden. APIs add fields without notice and call it a compatible
  change; forbidding them would quarantine every record on the day a field appears and trip the
  quarantine threshold for data the target does not even store. What the target needs — present,
  typed, in range — is what a contract checks.
- Strict where JSON has the type, lax where it cannot: ids are JSON integers (the string "12", a float
  or a boolean is rejected), text is a JSON string, money is an exact Decimal from a JSON number or a
  numeric string ("12.50"), timestamps are ISO 8601 strings WITH a timezone (a bare epoch number is
  rejected: seconds or milliseconds is a guess, and naive times are a guess about the zone).
- Text cannot hold NUL characters (Postgres text rejects them), so a record carrying one is rejected
  here with a clear error instead of failing the COPY of its whole page.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, Strict, StringConstraints


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 timestamp string with a timezone, e.g. 2024-05-01T12:00:00Z")
    return value


class SourceRecord(BaseModel):
    """Base of every contract model: unknown fields ignored, validated records immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


RecordId = Annotated[int, Strict(), Field(ge=1, le=2**63 - 1)]
Text = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")]
Money = Annotated[Decimal, Field(max_digits=12, decimal_places=2)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
