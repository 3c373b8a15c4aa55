-- DROP EXTENSION eds never silently deletes rows.

-- Empty tables: nothing to lose, the drop goes through.
DROP EXTENSION eds;
CREATE EXTENSION eds;

SELECT * FROM eds_generate_demo_data();

DROP EXTENSION eds;
DROP EXTENSION eds CASCADE;
DROP SCHEMA operational CASCADE;
SELECT count(*) AS customers_still_there FROM operational.customers;

-- A cascading drop that reaches the extension through its schema.
CREATE SCHEMA guard_api;
SET eds.allow_drop_with_data = on;
DROP EXTENSION eds;
RESET eds.allow_drop_with_data;
CREATE EXTENSION eds SCHEMA guard_api;
SELECT * FROM guard_api.eds_generate_demo_data();
DROP SCHEMA guard_api CASCADE;
SELECT count(*) AS loans_still_there FROM operational.loans;

-- Only the audit log has rows: still refused.
TRUNCATE operational.payments, operational.loans, operational.customers, operational.loan_products;
DROP EXTENSION eds;

-- The explicit, superuser-only way out.
SET eds.allow_drop_with_data = on;
DROP SCHEMA guard_api CASCADE;
RESET eds.allow_drop_with_data;
SELECT count(*) AS eds_installed FROM pg_extension WHERE extname = 'eds';
CREATE EXTENSION eds;
