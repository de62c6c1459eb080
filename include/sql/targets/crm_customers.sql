-- Customers from the CRM API (contract: include/contracts/customers.py), one row per customer, kept
-- current by upsert on customer_id.
CREATE SCHEMA IF NOT EXISTS crm;

CREATE TABLE IF NOT EXISTS crm.customers (
    customer_id   bigint       PRIMARY KEY,
    name          text         NOT NULL,
    email         text         NOT NULL,
    -- ISO 3166-1 alpha-2
    country       text         NOT NULL,
    updated_at    timestamptz  NOT NULL
);
