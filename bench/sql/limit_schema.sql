-- bench/sql/limit_schema.sql: the physical limit's target, in database
-- bench_limit on the warehouse server.  The source rows land as they are
-- (binary COPY), in logged tables like the star schema's; the indexes are
-- built afterwards (limit_indexes.sql), as many as eds keeps on the tables
-- these rows become (dim_customer 3, dim_loan 2, fact_payments 3).
DROP SCHEMA IF EXISTS lim CASCADE;
CREATE SCHEMA lim;
CREATE TABLE lim.customers (
	customer_id bigint NOT NULL, full_name text, email text, phone text, national_id text, city text,
	country text, segment text, created_at timestamptz, updated_at timestamptz);
CREATE TABLE lim.loans (
	loan_id bigint NOT NULL, customer_id bigint, product_id integer, amount numeric(14,2),
	interest_rate numeric(5,2), tenure_months integer, status text, outstanding_balance numeric(14,2),
	disbursed_at timestamptz, maturity_date date, loan_officer text, branch_code text,
	created_at timestamptz, updated_at timestamptz);
CREATE TABLE lim.payments (
	payment_id bigint NOT NULL, loan_id bigint, amount numeric(14,2), principal_portion numeric(14,2),
	interest_portion numeric(14,2), penalty_portion numeric(14,2), payment_method text,
	payment_date timestamptz, reference text, created_at timestamptz, updated_at timestamptz);
