-- eds_generate_demo_data(): deterministic, consistent, and careful.

SELECT * FROM eds_generate_demo_data();

-- The guide's demo sizes and a realistic mix.
SELECT segment, count(*) FROM operational.customers GROUP BY 1 ORDER BY 1;
SELECT status, count(*) FROM operational.loans GROUP BY 1 ORDER BY 1;
SELECT count(*) AS products FROM operational.loan_products;

-- Consistency: balances follow the payments, statuses follow balances.
SELECT count(*) AS inconsistent_balances
  FROM operational.loans l
  LEFT JOIN (SELECT loan_id, sum(principal_portion) AS paid FROM operational.payments GROUP BY 1) p USING (loan_id)
 WHERE l.amount - coalesce(p.paid, 0) <> l.outstanding_balance;
SELECT count(*) AS bad_status
  FROM operational.loans l
 WHERE (l.status = 'repaid') <> (l.outstanding_balance = 0)
	OR (l.status = 'pending') <> NOT EXISTS (SELECT FROM operational.payments p WHERE p.loan_id = l.loan_id);
SELECT count(*) AS payments_outside_loan_life
  FROM operational.payments p JOIN operational.loans l USING (loan_id)
 WHERE p.payment_date < l.disbursed_at OR p.payment_date > '2026-11-01'
	OR l.disbursed_at < '2023-01-01';
SELECT count(*) AS one_audit_row_per_loan
  FROM operational.audit_log WHERE table_name = 'loans' AND operation = 'INSERT';

-- Same seed, same data (including ids); another seed, other data.
CREATE TEMP TABLE gen_digest AS
SELECT (SELECT md5(string_agg(c::text, ',' ORDER BY customer_id)) FROM operational.customers c) AS customers,
	   (SELECT md5(string_agg(l::text, ',' ORDER BY loan_id)) FROM operational.loans l) AS loans,
	   (SELECT md5(string_agg(p::text, ',' ORDER BY payment_id)) FROM operational.payments p) AS payments;
TRUNCATE operational.payments, operational.loans, operational.customers;
SELECT * FROM eds_generate_demo_data(15, 15, 50, 42);
SELECT d.customers = (SELECT md5(string_agg(c::text, ',' ORDER BY customer_id)) FROM operational.customers c) AS same_customers,
	   d.loans = (SELECT md5(string_agg(l::text, ',' ORDER BY loan_id)) FROM operational.loans l) AS same_loans,
	   d.payments = (SELECT md5(string_agg(p::text, ',' ORDER BY payment_id)) FROM operational.payments p) AS same_payments
  FROM gen_digest d;
TRUNCATE operational.payments, operational.loans, operational.customers;
SELECT * FROM eds_generate_demo_data(15, 15, 50, 43);
SELECT d.payments = (SELECT md5(string_agg(p::text, ',' ORDER BY payment_id)) FROM operational.payments p) AS same_payments
  FROM gen_digest d;

-- Refusals leave the data as it was.
SELECT count(*) AS payments_before FROM operational.payments \gset
SELECT * FROM eds_generate_demo_data();
SELECT * FROM eds_generate_demo_data(NULL);
SELECT * FROM eds_generate_demo_data(0, 1, 1);
SELECT * FROM eds_generate_demo_data(10, -1, 1);
SELECT * FROM eds_generate_demo_data(10, 10, -5);
SELECT * FROM eds_generate_demo_data(2000000000, 10, 10);
SELECT * FROM eds_generate_demo_data(10, 1, 101);
SELECT * FROM eds_generate_demo_data(10, 0, 1);
SELECT count(*) = :payments_before AS unchanged FROM operational.payments;

-- A larger run: 10k payments stay consistent; new ids follow the demo's.
TRUNCATE operational.payments, operational.loans, operational.customers, operational.audit_log;
SELECT * FROM eds_generate_demo_data(1000, 2000, 10000, 7);
SELECT count(*) AS inconsistent_balances
  FROM operational.loans l
  LEFT JOIN (SELECT loan_id, sum(principal_portion) AS paid FROM operational.payments GROUP BY 1) p USING (loan_id)
 WHERE l.amount - coalesce(p.paid, 0) <> l.outstanding_balance;
SELECT payment_id > 10000 AS id_after_demo
  FROM operational.post_payment((SELECT min(loan_id) FROM operational.loans WHERE status = 'active'), 1, 'mpesa');

TRUNCATE operational.payments, operational.loans, operational.customers, operational.loan_products, operational.audit_log;
