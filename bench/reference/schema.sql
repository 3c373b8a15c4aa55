-- bench/reference/schema.sql
--
-- Warehouse schema of the benchmark's REFERENCE pipeline: the guide's
-- hand-made dblink ETL (guide section 4.5, star schema of section 4.4),
-- rebuilt as plain SQL so the benchmark can compare eds against what users
-- run today.  It is deliberately faithful to the guide, weaknesses included:
-- customers are type 1 (upsert on customer_id; effective_date/is_current are
-- only "SCD2 readiness"), fact_payments is one unpartitioned table, and the
-- ETL (etl.sql) re-extracts every source row on every run.  Indexes match
-- what eds has on the same tables (fact_payments: payment_id, customer_id,
-- loan_id), so the comparison is about the pipelines, not about indexing.
--
-- Run with psql -v ON_ERROR_STOP=1 in an EMPTY database (e.g. ref_warehouse
-- on the warehouse server), then load bench/reference/etl.sql.

CREATE EXTENSION IF NOT EXISTS dblink;

CREATE SCHEMA staging;
CREATE SCHEMA warehouse;
CREATE SCHEMA audit;

-- ---------------------------------------------------------------------------
-- Staging: a full copy of the source tables, emptied at the start of each run.
-- Ordinary (logged) tables, as in the guide; no indexes (they are only read
-- whole, by hash joins, after an ANALYZE).
-- ---------------------------------------------------------------------------
CREATE TABLE staging.stg_customers (
	customer_id		bigint,
	full_name		text,
	email			text,
	phone			text,
	national_id		text,
	city			text,
	country			text,
	segment			text,
	created_at		timestamptz,
	updated_at		timestamptz
);

CREATE TABLE staging.stg_loans (
	loan_id				bigint,
	customer_id			bigint,
	product_id			integer,
	amount				numeric(14,2),
	interest_rate		numeric(5,2),
	tenure_months		integer,
	status				text,
	outstanding_balance	numeric(14,2),
	disbursed_at		timestamptz,
	maturity_date		date,
	loan_officer		text,
	branch_code			text,
	created_at			timestamptz,
	updated_at			timestamptz
);

CREATE TABLE staging.stg_payments (
	payment_id			bigint,
	loan_id				bigint,
	amount				numeric(14,2),
	principal_portion	numeric(14,2),
	interest_portion	numeric(14,2),
	penalty_portion		numeric(14,2),
	payment_method		text,
	payment_date		timestamptz,
	reference			text,
	created_at			timestamptz,
	updated_at			timestamptz
);

-- ---------------------------------------------------------------------------
-- Dimensions
-- ---------------------------------------------------------------------------

-- Same columns and population (2018-01-01 .. 2050-12-31) as eds's dim_date.
CREATE TABLE warehouse.dim_date (
	date_sk			integer PRIMARY KEY,	-- YYYYMMDD
	full_date		date NOT NULL UNIQUE,
	day				smallint NOT NULL,
	month			smallint NOT NULL,
	month_name		text NOT NULL,
	quarter			smallint NOT NULL,
	year			smallint NOT NULL,
	week_of_year	smallint NOT NULL,
	day_name		text NOT NULL,
	is_weekend		boolean NOT NULL,
	is_month_end	boolean NOT NULL
);
INSERT INTO warehouse.dim_date
SELECT to_char(d, 'YYYYMMDD')::integer, d, extract(day FROM d), extract(month FROM d),
	   trim(to_char(d, 'Month')), extract(quarter FROM d), extract(year FROM d),
	   extract(week FROM d), trim(to_char(d, 'Day')), extract(isodow FROM d) IN (6, 7),
	   d = (date_trunc('month', d) + interval '1 month - 1 day')::date
  FROM generate_series('2018-01-01'::date, '2050-12-31'::date, interval '1 day') AS g(t),
	   LATERAL (SELECT t::date AS d) x;

-- "SCD Type 2 readiness" in the guide, but loaded as type 1: one row per
-- customer, overwritten in place (ON CONFLICT (customer_id) DO UPDATE).
CREATE TABLE warehouse.dim_customer (
	customer_sk		serial PRIMARY KEY,
	customer_id		bigint NOT NULL UNIQUE,
	full_name		text NOT NULL,
	email			text,
	city			text,
	segment			text,
	effective_date	date NOT NULL DEFAULT current_date,
	is_current		boolean NOT NULL DEFAULT true
);

CREATE TABLE warehouse.dim_loan (
	loan_sk			serial PRIMARY KEY,
	loan_id			bigint NOT NULL UNIQUE,
	customer_id		bigint NOT NULL,
	amount			numeric(14,2) NOT NULL,
	interest_rate	numeric(5,2) NOT NULL,
	tenure_months	integer NOT NULL,
	status			text NOT NULL,
	branch_code		text
);

CREATE TABLE warehouse.dim_payment_method (
	method_sk		serial PRIMARY KEY,
	method_code		text NOT NULL UNIQUE,
	method_name		text NOT NULL
);
INSERT INTO warehouse.dim_payment_method (method_code, method_name) VALUES
	('mpesa', 'M-Pesa'),
	('bank_transfer', 'Bank transfer'),
	('cash', 'Cash'),
	('cheque', 'Cheque'),
	('online', 'Online');

-- ---------------------------------------------------------------------------
-- Facts
-- ---------------------------------------------------------------------------

-- One row per payment.  A plain table (the guide has no partitions).  The
-- guide draws date_sk as a key of dim_date; like eds's facts, this table
-- leaves it unenforced (a per-row foreign-key check would dominate the first
-- load, and eds dropped it for that reason: the comparison stays like for like).
-- method_sk is NULL for a method missing from dim_payment_method (the source's
-- CHECK constraint allows only the five methods above, so it stays filled).
CREATE TABLE warehouse.fact_payments (
	payment_id			bigint PRIMARY KEY,
	payment_date		timestamptz NOT NULL,
	date_sk				integer NOT NULL,
	customer_sk			integer NOT NULL,
	loan_sk				integer NOT NULL,
	method_sk			integer,
	customer_id			bigint NOT NULL,
	loan_id				bigint NOT NULL,
	payment_amount		numeric(14,2) NOT NULL,
	principal_portion	numeric(14,2) NOT NULL,
	interest_portion	numeric(14,2) NOT NULL,
	penalty_portion		numeric(14,2) NOT NULL,
	customer_segment	text,
	loan_status			text,	-- as of the run that inserted the row; never refreshed
	branch_code			text
);
-- The same secondary indexes as eds's monthly partitions.
CREATE INDEX fact_payments_customer_id_idx ON warehouse.fact_payments (customer_id);
CREATE INDEX fact_payments_loan_id_idx ON warehouse.fact_payments (loan_id);

-- One row per loan, for portfolio analysis.
CREATE TABLE warehouse.fact_loans (
	loan_id				bigint PRIMARY KEY,
	loan_sk				integer NOT NULL,
	customer_sk			integer NOT NULL,
	customer_id			bigint NOT NULL,
	principal_amount	numeric(14,2) NOT NULL,
	outstanding_balance	numeric(14,2) NOT NULL,
	total_paid			numeric(16,2) NOT NULL DEFAULT 0,
	payment_count		bigint NOT NULL DEFAULT 0,
	loan_status			text NOT NULL,
	customer_segment	text,
	branch_code			text,
	is_active			boolean NOT NULL,
	is_defaulted		boolean NOT NULL,
	is_repaid			boolean NOT NULL
);

-- ---------------------------------------------------------------------------
-- Run history
-- ---------------------------------------------------------------------------
CREATE TABLE audit.etl_runs (
	run_id			bigserial PRIMARY KEY,
	run_started_at	timestamptz NOT NULL DEFAULT now(),
	run_finished_at	timestamptz,
	status			text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
	rows_extracted	bigint,
	rows_inserted	bigint,
	rows_updated	bigint,
	error_message	text
);
