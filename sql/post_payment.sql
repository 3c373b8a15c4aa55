-- operational.post_payment(): the split, the balance, and every refusal.

INSERT INTO operational.loan_products (product_name, product_type, min_amount, max_amount,
	min_tenure_months, max_tenure_months, base_interest_rate)
VALUES ('Payment Product', 'personal', 1000, 1000000, 1, 60, 12.00);
INSERT INTO operational.customers (full_name, email, segment) VALUES ('Achieng Otieno', 'achieng@x.ke', 'retail');
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance)
SELECT c.customer_id, p.product_id, v.amount, 12.00, 12, v.status, v.amount
  FROM operational.customers c, operational.loan_products p,
	   (VALUES (100000.00, 'active'), (5000.00, 'pending'), (20000.00, 'defaulted')) AS v(amount, status)
 ORDER BY v.amount DESC;
SELECT min(loan_id) AS active_loan FROM operational.loans WHERE status = 'active' \gset
SELECT min(loan_id) AS pending_loan FROM operational.loans WHERE status = 'pending' \gset
SELECT min(loan_id) AS defaulted_loan FROM operational.loans WHERE status = 'defaulted' \gset

-- 1% monthly interest on 100,000 is 1,000: the rest goes to principal.
SELECT principal_portion, interest_portion, penalty_portion, outstanding_balance, loan_status
  FROM operational.post_payment(:active_loan, 11000, 'mpesa');
-- Penalty first, then interest on the new balance (90,000 -> 900).
SELECT principal_portion, interest_portion, penalty_portion, outstanding_balance, loan_status
  FROM operational.post_payment(:active_loan, 5000, 'bank_transfer', p_penalty => 250, p_reference => 'BT-77');
-- A payment smaller than the interest due is all interest.
SELECT principal_portion, interest_portion, penalty_portion, outstanding_balance, loan_status
  FROM operational.post_payment(:active_loan, 300, 'cash');
SELECT amount, principal_portion, interest_portion, penalty_portion, payment_method, reference
  FROM operational.payments ORDER BY payment_id;

-- Refusals: each changes nothing.
SELECT count(*) AS payments_before, sum(outstanding_balance) AS owed_before
  FROM operational.payments, operational.loans WHERE loans.loan_id = :active_loan \gset
SELECT * FROM operational.post_payment(NULL, 100, 'cash');
SELECT * FROM operational.post_payment(:active_loan, NULL, 'cash');
SELECT * FROM operational.post_payment(:active_loan, 100, NULL);
SELECT * FROM operational.post_payment(:active_loan, 100, 'cash', NULL);
SELECT * FROM operational.post_payment(:active_loan, 0, 'cash');
SELECT * FROM operational.post_payment(:active_loan, -50, 'cash');
SELECT * FROM operational.post_payment(:active_loan, 100, 'bitcoin');
SELECT * FROM operational.post_payment(:active_loan, 100, '');
SELECT * FROM operational.post_payment(:active_loan, 100, 'cash', p_penalty => -1);
SELECT * FROM operational.post_payment(:active_loan, 100, 'cash', p_penalty => 101);
SELECT * FROM operational.post_payment(987654321, 100, 'cash');
SELECT * FROM operational.post_payment(:pending_loan, 100, 'cash');
SELECT * FROM operational.post_payment(:defaulted_loan, 100, 'cash');
SELECT * FROM operational.post_payment(:active_loan, 1e20, 'cash');
SELECT * FROM operational.post_payment(:active_loan, 200000, 'cash');
SELECT count(*) = :payments_before AS no_new_payment, sum(outstanding_balance) = :owed_before AS balance_unchanged
  FROM operational.payments, operational.loans WHERE loans.loan_id = :active_loan;

-- Paying exactly what is owed repays the loan; then it takes no more.
SELECT outstanding_balance AS owed,
	   outstanding_balance + round(outstanding_balance * interest_rate / 1200, 2) AS payoff
  FROM operational.loans WHERE loan_id = :active_loan \gset
SELECT * FROM operational.post_payment(:active_loan, :payoff + 0.01, 'online');
SELECT principal_portion = :owed AS all_principal, outstanding_balance, loan_status
  FROM operational.post_payment(:active_loan, :payoff, 'online');
SELECT status, outstanding_balance FROM operational.loans WHERE loan_id = :active_loan;
SELECT * FROM operational.post_payment(:active_loan, 10, 'cash');

-- The balance equals the amount minus the principal paid.
SELECT l.amount - sum(p.principal_portion) = l.outstanding_balance AS consistent
  FROM operational.loans l JOIN operational.payments p USING (loan_id)
 WHERE l.loan_id = :active_loan GROUP BY l.loan_id;
-- Every balance change went through the audit trigger.
SELECT operation, changed_columns FROM operational.audit_log
 WHERE record_id = :'active_loan' ORDER BY log_id;

TRUNCATE operational.payments, operational.loans, operational.customers, operational.loan_products, operational.audit_log;
