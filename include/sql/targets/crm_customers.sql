-- Customers from the CRM API (contract: include/contracts/customers.py), one row per customer, kept
-- current by upsert on customer_id.
CREATE SCHEMA IF NOT EXISTS crm;

CREATE TABLE IF NOT EXISTS crm.customers (
    customer_id   bigint       PRIMARY KEY,
    email         text         NOT NULL,
    full_name     text         NOT NULL,
    country_code  text         NOT NULL,
    created_at    timestamptz  NOT NULL,
    updated_at    timestamptz  NOT NULL
);
