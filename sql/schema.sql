-- The operational schema: tables, keys, constraints, indexes, triggers.

-- Failing-row details carry timestamps; keep the messages only.
\set VERBOSITY terse

SELECT c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'operational' AND c.relkind IN ('r', 'v')
 ORDER BY 1;

SELECT table_name, column_name, data_type, is_nullable
  FROM information_schema.columns
 WHERE table_schema = 'operational'
   AND table_name IN ('customers', 'loan_products', 'loans', 'payments', 'audit_log')
 ORDER BY table_name, ordinal_position;

SELECT conrelid::regclass AS tbl, contype, pg_get_constraintdef(oid) AS definition
  FROM pg_constraint
 WHERE connamespace = 'operational'::regnamespace
 ORDER BY conrelid::regclass::text, contype, pg_get_constraintdef(oid);

SELECT indexrelid::regclass AS index, indrelid::regclass AS tbl
  FROM pg_index WHERE indrelid::regclass::text LIKE 'operational.%'
 ORDER BY 1::text;

SELECT tgrelid::regclass AS tbl, tgname, tgfoid::regproc AS function
  FROM pg_trigger
 WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'operational.%'
 ORDER BY 1::text, 2;

-- Every table whose rows matter is kept by pg_dump.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'eds' ORDER BY 1::text;

-- Constraints reject bad rows.
INSERT INTO operational.loan_products (product_name, product_type, min_amount, max_amount,
	min_tenure_months, max_tenure_months, base_interest_rate)
VALUES ('Test Product', 'personal', 1000, 100000, 1, 24, 12.00);
INSERT INTO operational.customers (full_name, email, segment) VALUES ('Bad Segment', 'bad@x.ke', 'vip');
INSERT INTO operational.customers (full_name, email) VALUES ('', 'empty@x.ke');
INSERT INTO operational.customers (full_name, email, segment) VALUES ('Jane Wanjiru', 'jane@x.ke', 'retail');
INSERT INTO operational.customers (full_name, email, segment) VALUES ('Jane Twin', 'jane@x.ke', 'retail');
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
VALUES (999999, 1, 1000, 10, 12, 'active', 1000);
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT customer_id, 1, 1000, 10, 12, 'closed', 1000 FROM operational.customers WHERE email = 'jane@x.ke';
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT customer_id, 1, 1000, 10, 12, 'active', 1500 FROM operational.customers WHERE email = 'jane@x.ke';
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT customer_id, 1, 1000, 10, 12, 'repaid', 10 FROM operational.customers WHERE email = 'jane@x.ke';
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT customer_id, 1, 1000, 10, 12, 'active', 1000 FROM operational.customers WHERE email = 'jane@x.ke';
INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method)
SELECT loan_id, 100, 90, 10, 'bitcoin' FROM operational.loans;
INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method)
SELECT loan_id, 100, 90, 5, 'cash' FROM operational.loans;
INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method)
SELECT loan_id, 100, 90, 10, 'cash' FROM operational.loans;
SELECT count(*) AS payments FROM operational.payments;

-- Deleting a loan that has payments is refused by the foreign key.
DELETE FROM operational.loans;

-- Clean up for the next file.
TRUNCATE operational.payments, operational.loans, operational.customers, operational.loan_products, operational.audit_log;
