-- bench/sql/change.sql: the "1% change" the incremental runs are measured on.
-- Run on the primary with psql -v rep=N (1, 2, 3, ...): each repetition
-- touches different rows, chosen by key so every pipeline sees the same change.
--   * 1% new payments, spread over loans, dated in the last 30 days;
--   * 1% of loans updated (balance paid down; every tenth active one defaults);
--   * 0.5% of customers moving city or segment (new SCD2 versions in eds).
\set ON_ERROR_STOP on
BEGIN;
SELECT count(*) AS n_loans, (SELECT count(*) FROM operational.payments) AS n_payments
  FROM operational.loans \gset

INSERT INTO operational.payments
	(loan_id, amount, principal_portion, interest_portion, penalty_portion, payment_method, payment_date, reference)
SELECT ((g * 7919 + :rep * 104729) % :n_loans) + 1, 12.50, 10.00, 2.50, 0,
	   (ARRAY['mpesa', 'bank_transfer', 'cash', 'cheque', 'online'])[1 + g % 5],
	   now() - make_interval(secs => (g % (30 * 86400))),
	   'BENCH-' || :rep
  FROM generate_series(1, :n_payments / 100) AS g;

UPDATE operational.loans
   SET outstanding_balance = round(outstanding_balance * 0.99, 2),
	   status = CASE WHEN status = 'active' AND loan_id % 1000 = :rep * 10 THEN 'defaulted' ELSE status END
 WHERE loan_id % 100 = :rep;

UPDATE operational.customers c
   SET city = CASE WHEN x.city = c.city THEN 'Garissa' ELSE x.city END,
	   segment = CASE WHEN c.customer_id % 400 = :rep
					  THEN (ARRAY['retail', 'sme', 'corporate'])[1 + (c.customer_id / 400 + :rep) % 3]
					  ELSE c.segment END
  FROM (SELECT customer_id,
			   (ARRAY['Nairobi', 'Mombasa', 'Kisumu', 'Nakuru', 'Eldoret', 'Thika'])[1 + (customer_id / 200 + :rep) % 6] AS city
		  FROM operational.customers WHERE customer_id % 200 = :rep) x
 WHERE c.customer_id = x.customer_id;
COMMIT;
