"""Customers from the CRM API, loaded into crm.customers (include/sql/targets/crm_customers.sql)."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from batchkit.contracts import RecordContract
from batchkit.load import TargetSpec
from include.contracts import RecordId, SourceRecord, Text, Timestamp

# Deliberately loose: the CRM owns address validity; the warehouse only needs something mail-shaped.
Email = Annotated[str, StringConstraints(strict=True, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")]
CountryCode = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{2}$")]


class Customer(SourceRecord):
    customer_id: RecordId
    name: Text
    email: Email
    country: CountryCode
    updated_at: Timestamp


CONTRACT = RecordContract(source="customers", model=Customer)
TARGET = TargetSpec(
    table="crm.customers",
    ddl="sql/targets/crm_customers.sql",
    columns=tuple(Customer.model_fields),
    key=("customer_id",),
)
