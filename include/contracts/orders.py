"""Orders from the shop API, loaded into sales.orders (include/sql/targets/sales_orders.sql)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import StringConstraints, model_validator

from batchkit.contracts import RecordContract
from batchkit.load import TargetSpec
from include.contracts import NonNegativeMoney, RecordId, SourceRecord, Timestamp


class Order(SourceRecord):
    order_id: RecordId
    customer_id: RecordId
    order_ts: Timestamp
    updated_at: Timestamp
    # An order's amount is never negative: refunds are separate documents in the shop's API.
    amount: NonNegativeMoney
    status: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z][a-z_]{0,31}$")]

    @model_validator(mode="after")
    def _updated_after_ordered(self) -> Self:
        if self.updated_at < self.order_ts:
            raise ValueError(
                f"updated_at {self.updated_at.isoformat()} is before order_ts {self.order_ts.isoformat()}"
            )
        return self


CONTRACT = RecordContract(source="orders", model=Order)
TARGET = TargetSpec(
    table="sales.orders",
    ddl="sql/targets/sales_orders.sql",
    columns=tuple(Order.model_fields),
    key=("order_id",),
)
