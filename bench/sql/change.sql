-- bench/sql/change.sql: the change the incremental runs are measured on.
-- Run on the primary with psql -v rep=N (1, 2, 3, ...): each repetition
-- touches different rows, chosen by key so every pipeline sees the same change.
--
-- Without more variables it is the "1% change" of the scale:
--   * 1% new payments, spread over loans, dated in the last 30 days;
--   * 1% of loans updated (balance paid down, loan_id % 100 = rep);
--   * 0.5% of customers moving city (customer_id % 200 = rep), half of them
--     also changing segment (new SCD2 versions in eds).
-- The status clause (loan_id % 1000 = rep * 10 becomes 'defaulted') never
-- matches a loan that the WHERE clause selects; it is kept as it is so that
-- the change stays the one every earlier result was measured on.
--
-- With -v n_pay=P -v loan_mod=L -v cust_mod=C it inserts P payments, updates
-- the loans with loan_id % L = rep % L and the customers with
-- customer_id % C = rep % C.  bench/run's "fixed change" (10,000 payments,
-- 1,000 loans, 250 customers at every scale) passes P = 10000,
-- L = loans / 1000, C = customers / 250; at M that is exactly the 1% change.
-- Keys are 1..n (bigserial, generated data), so the counts are exact.
--
-- Last line of output (psql -At): "changed PAY LOANS CUSTOMERS BYTES", the
-- rows changed and the sum of pg_column_size() of those rows as they are
-- after the change (the raw size of what a replica of them must receive).
\set ON_ERROR_STOP on
BEGIN;
SELECT count(*) AS n_loans, (SELECT count(*) FROM operational.payments) AS n_payments
  FROM operational.loans \gset
\if :{?n_pay}
\else
SELECT :n_payments / 100 AS n_pay \gset
\endif
\if :{?loan_mod}
\else
\set loan_mod 100
\endif
\if :{?cust_mod}
\else
\set cust_mod 200
\endif

WITH ins AS (
	INSERT INTO operational.payments
		(loan_id, amount, principal_portion, interest_portion, penalty_portion, payment_method, payment_date, reference)
	SELECT ((g * 7919 + :rep * 104729) % :n_loans) + 1, 12.50, 10.00, 2.50, 0,
		   (ARRAY['mpesa', 'bank_transfer', 'cash', 'cheque', 'online'])[1 + g % 5],
		   now() - make_interval(secs => (g % (30 * 86400))),
		   'BENCH-' || :rep
	  FROM generate_series(1, :n_pay) AS g
	RETURNING pg_column_size(payments.*) AS size)
SELECT count(*) AS pay_rows, coalesce(sum(size), 0) AS pay_bytes FROM ins \gset

WITH upd AS (
	UPDATE operational.loans
	   SET outstanding_balance = round(outstanding_balance * 0.99, 2),
		   status = CASE WHEN status = 'active' AND loan_id % 1000 = :rep * 10 THEN 'defaulted' ELSE status END
	 WHERE loan_id % :loan_mod = :rep % :loan_mod
	RETURNING pg_column_size(loans.*) AS size)
SELECT count(*) AS loan_rows, coalesce(sum(size), 0) AS loan_bytes FROM upd \gset

WITH upd AS (
	UPDATE operational.customers c
	   SET city = CASE WHEN x.city = c.city THEN 'Garissa' ELSE x.city END,
		   segment = CASE WHEN c.customer_id % (2 * :cust_mod) = :rep % (2 * :cust_mod)
						  THEN (ARRAY['retail', 'sme', 'corporate'])[1 + (c.customer_id / (2 * :cust_mod) + :rep) % 3]
						  ELSE c.segment END
	  FROM (SELECT customer_id,
				   (ARRAY['Nairobi', 'Mombasa', 'Kisumu', 'Nakuru', 'Eldoret', 'Thika'])[1 + (customer_id / :cust_mod + :rep) % 6] AS city
			  FROM operational.customers WHERE customer_id % :cust_mod = :rep % :cust_mod) x
	 WHERE c.customer_id = x.customer_id
	RETURNING pg_column_size(c.*) AS size)
SELECT count(*) AS cust_rows, coalesce(sum(size), 0) AS cust_bytes FROM upd \gset
COMMIT;
SELECT :pay_bytes + :loan_bytes + :cust_bytes AS changed_bytes \gset
\echo changed :pay_rows :loan_rows :cust_rows :changed_bytes
