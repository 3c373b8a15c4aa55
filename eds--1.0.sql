/* eds--1.0.sql: install script of the eds extension, version 1.0 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eds" to load this file. \quit

/*
 * One extension, both sides.  Every database that runs CREATE EXTENSION eds
 * gets the same objects: the operational (source) schema and, in later
 * parts, the warehouse schemas.  Which side a database plays is decided by
 * how it is used, not by what is installed; see docs/architecture.md.
 *
 * Layout:
 *   operational  the loan system's tables, views and post_payment()
 *   eds          internals: trigger functions, helpers
 *   @extschema@  the user-facing API, eds_* functions (normally public)
 */

-- ---------------------------------------------------------------------------
-- Group roles.  Roles are cluster-wide, so they are not members of the
-- extension: a second database with eds reuses them, and DROP EXTENSION
-- leaves them.  They cannot log in; login roles are made members of them.
-- ---------------------------------------------------------------------------
DO $roles$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['app_user', 'readonly_user', 'etl_reader']
	LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END
$roles$;

CREATE SCHEMA operational;
COMMENT ON SCHEMA operational IS 'eds: the loan system''s operational (OLTP) data';

CREATE SCHEMA eds;
COMMENT ON SCHEMA eds IS 'eds: internal functions of the eds extension';
REVOKE ALL ON SCHEMA eds FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Trigger functions (C)
-- ---------------------------------------------------------------------------
CREATE FUNCTION eds.set_updated_at() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_set_updated_at';
COMMENT ON FUNCTION eds.set_updated_at() IS
	'BEFORE UPDATE row trigger: stamps updated_at (or the column named as argument) with now()';

CREATE FUNCTION eds.audit_row() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_audit_row';
COMMENT ON FUNCTION eds.audit_row() IS
	'AFTER INSERT/UPDATE/DELETE row trigger: appends old and new row as jsonb to operational.audit_log';

REVOKE ALL ON FUNCTION eds.set_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION eds.audit_row() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Operational schema
-- ---------------------------------------------------------------------------
CREATE TABLE operational.customers (
	customer_id		bigserial PRIMARY KEY,
	full_name		text NOT NULL CHECK (full_name <> ''),
	email			text NOT NULL UNIQUE,
	phone			text,
	national_id		text UNIQUE,
	city			text,
	country			text NOT NULL DEFAULT 'Kenya',
	segment			text NOT NULL DEFAULT 'retail'
		CHECK (segment IN ('retail', 'sme', 'corporate')),
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE operational.customers IS 'Borrowers: people (retail) and businesses (sme, corporate)';
COMMENT ON COLUMN operational.customers.segment IS 'retail, sme or corporate';
COMMENT ON COLUMN operational.customers.updated_at IS 'Time of the last change, kept by eds.set_updated_at()';
CREATE INDEX customers_segment_idx ON operational.customers (segment);

CREATE TABLE operational.loan_products (
	product_id			serial PRIMARY KEY,
	product_name		text NOT NULL UNIQUE,
	product_type		text NOT NULL,
	min_amount			numeric(14,2) NOT NULL CHECK (min_amount > 0),
	max_amount			numeric(14,2) NOT NULL,
	min_tenure_months	integer NOT NULL CHECK (min_tenure_months > 0),
	max_tenure_months	integer NOT NULL,
	base_interest_rate	numeric(5,2) NOT NULL
		CHECK (base_interest_rate >= 0 AND base_interest_rate <= 100),
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (max_amount >= min_amount),
	CHECK (max_tenure_months >= min_tenure_months)
);
COMMENT ON TABLE operational.loan_products IS 'The loan products the bank offers, with their limits';
COMMENT ON COLUMN operational.loan_products.base_interest_rate IS 'Annual rate in percent';

CREATE TABLE operational.loans (
	loan_id				bigserial PRIMARY KEY,
	customer_id			bigint NOT NULL REFERENCES operational.customers,
	product_id			integer NOT NULL REFERENCES operational.loan_products,
	amount				numeric(14,2) NOT NULL CHECK (amount > 0),
	interest_rate		numeric(5,2) NOT NULL
		CHECK (interest_rate >= 0 AND interest_rate <= 100),
	tenure_months		integer NOT NULL CHECK (tenure_months > 0),
	status				text NOT NULL DEFAULT 'pending'
		CHECK (status IN ('pending', 'active', 'repaid', 'defaulted')),
	outstanding_balance	numeric(14,2) NOT NULL
		CHECK (outstanding_balance >= 0),
	disbursed_at		timestamptz,
	maturity_date		date,
	loan_officer		text,
	branch_code			text,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (outstanding_balance <= amount),
	CHECK (status <> 'repaid' OR outstanding_balance = 0)
);
COMMENT ON TABLE operational.loans IS 'Loans; every change is written to operational.audit_log';
COMMENT ON COLUMN operational.loans.interest_rate IS 'Annual rate in percent';
COMMENT ON COLUMN operational.loans.status IS 'pending (not disbursed), active, repaid or defaulted';
COMMENT ON COLUMN operational.loans.outstanding_balance IS 'Principal still owed: amount minus the principal portions paid';
COMMENT ON COLUMN operational.loans.branch_code IS 'Branch that owns the loan, e.g. NBO-01';
CREATE INDEX loans_customer_id_idx ON operational.loans (customer_id);
CREATE INDEX loans_product_id_idx ON operational.loans (product_id);
CREATE INDEX loans_status_idx ON operational.loans (status);

CREATE TABLE operational.payments (
	payment_id			bigserial PRIMARY KEY,
	loan_id				bigint NOT NULL REFERENCES operational.loans,
	amount				numeric(14,2) NOT NULL CHECK (amount > 0),
	principal_portion	numeric(14,2) NOT NULL DEFAULT 0 CHECK (principal_portion >= 0),
	interest_portion	numeric(14,2) NOT NULL DEFAULT 0 CHECK (interest_portion >= 0),
	penalty_portion		numeric(14,2) NOT NULL DEFAULT 0 CHECK (penalty_portion >= 0),
	payment_method		text NOT NULL
		CHECK (payment_method IN ('mpesa', 'bank_transfer', 'cash', 'cheque', 'online')),
	payment_date		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	reference			text,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	CHECK (amount = principal_portion + interest_portion
		   + penalty_portion)
);
COMMENT ON TABLE operational.payments IS 'Repayments; post them with operational.post_payment()';
COMMENT ON COLUMN operational.payments.amount IS 'Total paid: principal + interest + penalty portions';
COMMENT ON COLUMN operational.payments.payment_method IS 'mpesa, bank_transfer, cash, cheque or online';
CREATE INDEX payments_loan_id_idx ON operational.payments (loan_id);
CREATE INDEX payments_payment_date_idx ON operational.payments (payment_date);

CREATE TABLE operational.audit_log (
	log_id			bigserial PRIMARY KEY,
	table_name		text NOT NULL,
	operation		text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
	record_id		text,
	old_values		jsonb,
	new_values		jsonb,
	changed_columns	text[],
	change_time		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	actor			text NOT NULL,
	db_user			text NOT NULL,
	txid			bigint NOT NULL
);
COMMENT ON TABLE operational.audit_log IS 'Append-only change history written by eds.audit_row(); only its owner may change or delete rows';
COMMENT ON COLUMN operational.audit_log.record_id IS 'Key of the changed row, as text';
COMMENT ON COLUMN operational.audit_log.old_values IS 'Row before the change (UPDATE, DELETE)';
COMMENT ON COLUMN operational.audit_log.new_values IS 'Row after the change (INSERT, UPDATE)';
COMMENT ON COLUMN operational.audit_log.changed_columns IS 'Columns whose value an UPDATE changed';
COMMENT ON COLUMN operational.audit_log.change_time IS 'Start time of the changing transaction';
COMMENT ON COLUMN operational.audit_log.actor IS 'eds.actor set by the application for the transaction, else session_user';
COMMENT ON COLUMN operational.audit_log.db_user IS 'The database login (session_user) that made the change';
COMMENT ON COLUMN operational.audit_log.txid IS 'Transaction id (xid8) of the change';
CREATE INDEX audit_log_record_idx ON operational.audit_log (table_name, record_id);
CREATE INDEX audit_log_change_time_idx ON operational.audit_log USING brin (change_time);

-- Triggers
CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON operational.customers
	FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
CREATE TRIGGER loan_products_set_updated_at BEFORE UPDATE ON operational.loan_products
	FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
CREATE TRIGGER loans_set_updated_at BEFORE UPDATE ON operational.loans
	FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
CREATE TRIGGER payments_set_updated_at BEFORE UPDATE ON operational.payments
	FOR EACH ROW EXECUTE FUNCTION eds.set_updated_at();
CREATE TRIGGER loans_audit AFTER INSERT OR UPDATE OR DELETE ON operational.loans
	FOR EACH ROW EXECUTE FUNCTION eds.audit_row();

-- pg_dump keeps the rows of these tables (and the sequences' positions).
SELECT pg_catalog.pg_extension_config_dump('operational.customers', '');
SELECT pg_catalog.pg_extension_config_dump('operational.customers_customer_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('operational.loan_products', '');
SELECT pg_catalog.pg_extension_config_dump('operational.loan_products_product_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('operational.loans', '');
SELECT pg_catalog.pg_extension_config_dump('operational.loans_loan_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('operational.payments', '');
SELECT pg_catalog.pg_extension_config_dump('operational.payments_payment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('operational.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('operational.audit_log_log_id_seq', '');

-- ---------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------
CREATE VIEW operational.vw_active_loans AS
SELECT l.loan_id, l.customer_id, c.full_name, c.segment, p.product_name,
	   l.amount, l.interest_rate, l.tenure_months, l.outstanding_balance,
	   l.amount - l.outstanding_balance AS principal_repaid,
	   l.disbursed_at, l.maturity_date, l.branch_code, l.loan_officer
  FROM operational.loans l
  JOIN operational.customers c ON c.customer_id = l.customer_id
  JOIN operational.loan_products p ON p.product_id = l.product_id
 WHERE l.status = 'active';
COMMENT ON VIEW operational.vw_active_loans IS 'Loans being repaid, with borrower and product';

CREATE VIEW operational.vw_customer_payment_summary AS
SELECT c.customer_id, c.full_name, c.segment, c.city,
	   COALESCE(l.loan_count, 0) AS loan_count,
	   COALESCE(l.total_borrowed, 0) AS total_borrowed,
	   COALESCE(l.total_outstanding, 0) AS total_outstanding,
	   COALESCE(p.payment_count, 0) AS payment_count,
	   COALESCE(p.total_paid, 0) AS total_paid,
	   p.last_payment_date
  FROM operational.customers c
  LEFT JOIN (SELECT customer_id, pg_catalog.count(*) AS loan_count,
					pg_catalog.sum(amount) AS total_borrowed,
					pg_catalog.sum(outstanding_balance) AS total_outstanding
			   FROM operational.loans GROUP BY customer_id) l
	ON l.customer_id = c.customer_id
  LEFT JOIN (SELECT ln.customer_id, pg_catalog.count(*) AS payment_count,
					pg_catalog.sum(py.amount) AS total_paid,
					pg_catalog.max(py.payment_date) AS last_payment_date
			   FROM operational.payments py
			   JOIN operational.loans ln ON ln.loan_id = py.loan_id
			  GROUP BY ln.customer_id) p
	ON p.customer_id = c.customer_id;
COMMENT ON VIEW operational.vw_customer_payment_summary IS 'Per customer: loans, amounts borrowed and owed, payments made';

-- ---------------------------------------------------------------------------
-- Posting a payment
-- ---------------------------------------------------------------------------
CREATE FUNCTION operational.post_payment(
	p_loan_id	bigint,
	p_amount	numeric,
	p_method	text,
	p_penalty	numeric DEFAULT 0,
	p_reference	text DEFAULT NULL,
	p_paid_at	timestamptz DEFAULT pg_catalog.now(),
	OUT payment_id			bigint,
	OUT principal_portion	numeric,
	OUT interest_portion	numeric,
	OUT penalty_portion		numeric,
	OUT outstanding_balance	numeric,
	OUT loan_status			text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $post$
/*
 * The row lock on the loan (FOR UPDATE) is what prevents the lost update of
 * the guide's two tellers: a second payment on the same loan waits, then
 * reads the balance the first one left.  The payment is split penalty first,
 * then one month's interest on the outstanding principal, then principal.
 */
DECLARE
	v_loan			operational.loans%ROWTYPE;
	v_remaining		numeric;
	v_interest_due	numeric;
BEGIN
	IF p_loan_id IS NULL OR p_amount IS NULL OR p_method IS NULL
	   OR p_penalty IS NULL OR p_paid_at IS NULL THEN
		RAISE EXCEPTION 'post_payment: loan, amount, method, penalty and payment time must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Pass a value for each argument; penalty defaults to 0.';
	END IF;
	IF p_amount IN ('NaN', 'Infinity', '-Infinity') OR p_penalty IN ('NaN', 'Infinity', '-Infinity') THEN
		RAISE EXCEPTION 'payment amount and penalty must be finite numbers, got % and %', p_amount, p_penalty
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Post the amount the customer paid, in the loan''s currency.';
	END IF;
	IF p_amount <= 0 THEN
		RAISE EXCEPTION 'payment amount must be positive, got %', p_amount
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Post the amount the customer paid, greater than 0.';
	END IF;
	IF p_method NOT IN ('mpesa', 'bank_transfer', 'cash', 'cheque', 'online') THEN
		RAISE EXCEPTION 'unknown payment method "%"', p_method
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use one of: mpesa, bank_transfer, cash, cheque, online.';
	END IF;
	IF p_penalty < 0 OR p_penalty > p_amount THEN
		RAISE EXCEPTION 'penalty % is outside 0 .. payment amount %', p_penalty, p_amount
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The penalty is the part of the payment that settles late fees.';
	END IF;

	SELECT * INTO v_loan FROM operational.loans l
	 WHERE l.loan_id = p_loan_id
	   FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'loan % does not exist', p_loan_id
			USING ERRCODE = 'no_data_found',
				  HINT = 'Check the loan number.';
	END IF;
	IF v_loan.status <> 'active' THEN
		RAISE EXCEPTION 'loan % is %, not active', p_loan_id, v_loan.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'Payments can only be posted to active loans.',
				  HINT = CASE v_loan.status
							WHEN 'pending' THEN 'Disburse the loan first.'
							WHEN 'repaid' THEN 'The loan is fully repaid; refund the customer instead.'
							ELSE 'Post recoveries on defaulted loans through collections.'
						 END;
	END IF;

	penalty_portion := round(p_penalty, 2);
	v_remaining := round(p_amount, 2) - penalty_portion;
	v_interest_due := round(v_loan.outstanding_balance * v_loan.interest_rate / 1200, 2);
	interest_portion := least(v_remaining, v_interest_due);
	principal_portion := v_remaining - interest_portion;

	IF principal_portion > v_loan.outstanding_balance THEN
		RAISE EXCEPTION 'payment of % on loan % is more than is owed', p_amount, p_loan_id
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Outstanding principal %s plus this month''s interest %s and penalty %s is %s.',
								  v_loan.outstanding_balance, v_interest_due, penalty_portion,
								  v_loan.outstanding_balance + v_interest_due + penalty_portion),
				  HINT = 'Post at most the amount owed.';
	END IF;

	INSERT INTO operational.payments AS py
		(loan_id, amount, principal_portion, interest_portion, penalty_portion,
		 payment_method, payment_date, reference)
	VALUES (p_loan_id, round(p_amount, 2), principal_portion, interest_portion, penalty_portion,
			p_method, p_paid_at, p_reference)
	RETURNING py.payment_id INTO payment_id;

	outstanding_balance := v_loan.outstanding_balance - principal_portion;
	loan_status := CASE WHEN outstanding_balance = 0 THEN 'repaid' ELSE 'active' END;

	UPDATE operational.loans l
	   SET outstanding_balance = post_payment.outstanding_balance,
		   status = post_payment.loan_status
	 WHERE l.loan_id = p_loan_id;
END
$post$;
COMMENT ON FUNCTION operational.post_payment(bigint, numeric, text, numeric, text, timestamptz) IS
	'Posts a payment to an active loan atomically: splits it into penalty, interest and principal, lowers the balance, marks the loan repaid at zero';

-- ---------------------------------------------------------------------------
-- Demo data
-- ---------------------------------------------------------------------------

-- A uniform number in [0, 1) that depends only on (seed, stream, i): the
-- generator is deterministic and needs no sequential random() state.
CREATE FUNCTION eds.uniform(seed bigint, stream integer, i bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
	SELECT ((pg_catalog.hashint8extended(i, seed * 1000 + stream) >> 11) & 9007199254740991)::double precision
		   / 9007199254740992.0::double precision;
END;
COMMENT ON FUNCTION eds.uniform(bigint, integer, bigint) IS
	'Deterministic pseudo-random number in [0, 1) for (seed, stream, i), used by the demo generator';

-- Pick an element of a text array with u in [0, 1).
CREATE FUNCTION eds.pick(items text[], u double precision)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
	SELECT items[1 + pg_catalog.floor(u * pg_catalog.cardinality(items))::integer];
END;
COMMENT ON FUNCTION eds.pick(text[], double precision) IS
	'Element of items chosen by u in [0, 1), used by the demo generator';

CREATE FUNCTION eds_generate_demo_data(
	customers	integer DEFAULT 15,
	loans		integer DEFAULT 15,
	payments	integer DEFAULT 50,
	seed		integer DEFAULT 42)
RETURNS TABLE (table_name text, rows_inserted bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $gen$
/*
 * Set-based and deterministic: every attribute is eds.uniform(seed, stream,
 * row number), so the same arguments give the same rows on any machine.
 * Loans and payments are computed together first, so each loan is inserted
 * once with the balance its payments leave (one audit row per loan).
 */
DECLARE
	v_first_day	constant timestamptz := '2023-01-01 00:00:00+00';
	v_last_day	constant timestamptz := '2026-10-31 00:00:00+00';
	v_products	bigint;
	v_loans		bigint;
	v_payments	bigint;
BEGIN
	IF customers IS NULL OR loans IS NULL OR payments IS NULL OR seed IS NULL THEN
		RAISE EXCEPTION 'eds_generate_demo_data: arguments must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'Call eds_generate_demo_data() for the guide''s 15 customers, 15 loans and 50 payments.';
	END IF;
	IF customers < 1 OR customers > 10000000 OR loans < 0 OR loans > 20000000
	   OR payments < 0 OR payments > 100000000 THEN
		RAISE EXCEPTION 'eds_generate_demo_data: sizes out of range (customers %, loans %, payments %)',
						customers, loans, payments
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Use 1..10,000,000 customers, 0..20,000,000 loans and 0..100,000,000 payments.';
	END IF;
	IF payments > 0 AND (loans = 0 OR payments > loans::bigint * 100) THEN
		RAISE EXCEPTION 'eds_generate_demo_data: % payments cannot be spread over % loans', payments, loans
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Ask for at most 100 payments per loan on average.';
	END IF;
	IF EXISTS (SELECT FROM operational.customers) OR EXISTS (SELECT FROM operational.loans)
	   OR EXISTS (SELECT FROM operational.payments) THEN
		RAISE EXCEPTION 'eds_generate_demo_data: the operational tables already hold data'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'The generator only fills empty tables, so it never mixes demo rows with real ones.',
				  HINT = 'Use an empty database, or TRUNCATE operational.payments, operational.loans, operational.customers first.';
	END IF;

	-- Products are reference data: inserted once, kept if present.
	IF NOT EXISTS (SELECT FROM operational.loan_products) THEN
		INSERT INTO operational.loan_products
			(product_name, product_type, min_amount, max_amount, min_tenure_months, max_tenure_months, base_interest_rate)
		VALUES ('Personal Loan', 'personal', 5000, 500000, 3, 36, 14.00),
			   ('Salary Advance', 'personal', 1000, 100000, 1, 6, 12.00),
			   ('SME Working Capital', 'business', 50000, 5000000, 6, 24, 15.50),
			   ('Asset Finance', 'asset', 100000, 10000000, 12, 60, 13.00),
			   ('Mortgage', 'mortgage', 1000000, 30000000, 60, 240, 11.50),
			   ('Corporate Term Loan', 'business', 1000000, 100000000, 12, 84, 12.50);
	END IF;
	SELECT count(*) INTO v_products FROM operational.loan_products;

	INSERT INTO operational.customers
		(customer_id, full_name, email, phone, national_id, city, country, segment, created_at, updated_at)
	SELECT i, g.first_name || ' ' || g.last_name,
		   lower(g.first_name || '.' || g.last_name || '.' || i || '@example.co.ke'),
		   '+2547' || lpad((floor(eds.uniform(seed, 3, i) * 100000000))::bigint::text, 8, '0'),
		   (20000000 + i)::text,
		   g.city, 'Kenya', g.segment, g.created, g.created
	  FROM generate_series(1, customers) AS i,
		   LATERAL (SELECT eds.pick('{Wanjiru,Kamau,Otieno,Achieng,Mwangi,Njeri,Kiprop,Chebet,Omondi,Akinyi,Mutua,Wambui,Kiplagat,Jeptoo,Onyango,Nyambura,Barasa,Wafula,Auma,Karanja,Nduta,Kiptoo,Muthoni,Odhiambo,Amina,Hassan,Zawadi,Baraka,Imani,Juma}', eds.uniform(seed, 1, i)) AS first_name,
				   eds.pick('{Mwangi,Otieno,Kamau,Ochieng,Kiprono,Wanjala,Njoroge,Mutiso,Omondi,Kariuki,Kibet,Wekesa,Chege,Owino,Maina,Koech,Gitau,Nyaga,Rotich,Mbugua,Ali,Abdi,Wairimu,Ndungu,Langat}', eds.uniform(seed, 2, i)) AS last_name,
				   eds.pick('{Nairobi,Nairobi,Nairobi,Nairobi,Nairobi,Nairobi,Mombasa,Mombasa,Mombasa,Kisumu,Kisumu,Nakuru,Nakuru,Eldoret,Eldoret,Thika,Nyeri,Machakos,Meru,Kakamega,Malindi,Garissa}', eds.uniform(seed, 4, i)) AS city,
				   CASE WHEN eds.uniform(seed, 5, i) < 0.70 THEN 'retail'
						WHEN eds.uniform(seed, 5, i) < 0.92 THEN 'sme'
						ELSE 'corporate' END AS segment,
				   date_trunc('second', v_first_day + (eds.uniform(seed, 6, i) * 1000) * interval '1 day') AS created) AS g;

	-- Loans: borrower, product by segment, amount, rate, tenure, dates.
	CREATE TEMP TABLE eds_gen_loans ON COMMIT DROP AS
	SELECT i AS loan_id, c.customer_id, c.city,
		   p.product_id, p.min_amount, p.max_amount, p.min_tenure_months, p.max_tenure_months,
		   p.base_interest_rate,
		   greatest(p.min_amount,
					round((p.min_amount + power(eds.uniform(seed, 12, i), 2) * (p.max_amount - p.min_amount))::numeric / 500) * 500)::numeric(14,2) AS amount,
		   greatest(0, least(100, p.base_interest_rate + round((eds.uniform(seed, 13, i) * 4 - 1)::numeric, 2)))::numeric(5,2) AS interest_rate,
		   (p.min_tenure_months + floor(eds.uniform(seed, 14, i) * (p.max_tenure_months - p.min_tenure_months + 1)))::integer AS tenure_months,
		   greatest(c.created_at, date_trunc('second', v_first_day + (eds.uniform(seed, 15, i) * 1276) * interval '1 day')) AS requested_at,
		   eds.uniform(seed, 16, i) AS fate,
		   greatest(c.created_at, date_trunc('second', v_first_day + (eds.uniform(seed, 15, i) * 1276) * interval '1 day'))
			 + (1 + floor(eds.uniform(seed, 16, i) * 7)) * interval '1 day' AS disbursed_at,
		   'LO-' || lpad((1 + floor(eds.uniform(seed, 17, i) * 40))::integer::text, 3, '0') AS loan_officer,
		   (1 + floor(eds.uniform(seed, 18, i) * 3))::integer AS branch_no
	  FROM generate_series(1, loans) AS i
	  JOIN LATERAL (SELECT cu.customer_id, cu.city, cu.segment, cu.created_at
					  FROM operational.customers cu
					 WHERE cu.customer_id = 1 + floor(eds.uniform(seed, 10, i) * customers)::bigint) c ON true
	  JOIN LATERAL (SELECT lp.* FROM operational.loan_products lp
					 ORDER BY lp.product_id
					OFFSET CASE c.segment
							 WHEN 'retail' THEN (ARRAY[0, 0, 0, 1, 1, 3, 4])[1 + floor(eds.uniform(seed, 11, i) * 7)::integer]
							 WHEN 'sme' THEN (ARRAY[2, 2, 2, 3])[1 + floor(eds.uniform(seed, 11, i) * 4)::integer]
							 ELSE (ARRAY[5, 5, 3])[1 + floor(eds.uniform(seed, 11, i) * 3)::integer]
						   END % v_products
					 LIMIT 1) p ON true;

	-- Payments: each picks a loan; k = payments on that loan, r = its rank.
	CREATE TEMP TABLE eds_gen_payments ON COMMIT DROP AS
	SELECT j AS payment_id,
		   1 + floor(eds.uniform(seed, 20, j) * loans)::bigint AS loan_id
	  FROM generate_series(1, payments) AS j;

	-- Per payment: principal share, interest on the balance before it,
	-- sometimes a penalty; dates spaced evenly after disbursement.
	CREATE TEMP TABLE eds_gen_lines ON COMMIT DROP AS
	WITH ranked AS (
		SELECT p.payment_id, p.loan_id,
			   count(*) OVER w AS k,
			   row_number() OVER (w ORDER BY p.payment_id) AS r
		  FROM eds_gen_payments p
		WINDOW w AS (PARTITION BY p.loan_id)
	), shaped AS (
		SELECT rk.*, l.amount, l.interest_rate,
			   l.disbursed_at,
			   CASE WHEN l.fate < 0.25 THEN 1.0 ELSE round((0.10 + 0.80 * eds.uniform(seed, 30, rk.loan_id))::numeric, 4) END AS share
		  FROM ranked rk JOIN eds_gen_loans l USING (loan_id)
	), split AS (
		SELECT s.*, round(s.amount * s.share / s.k, 2) AS base
		  FROM shaped s
	)
	SELECT payment_id, loan_id, r, k,
		   CASE WHEN share = 1.0 AND r = k THEN amount - base * (k - 1) ELSE base END AS principal,
		   round((amount - base * (r - 1)) * interest_rate / 1200, 2) AS interest,
		   CASE WHEN eds.uniform(seed, 31, payment_id) < 0.07
				THEN round(0.05 * base, 2) ELSE 0 END AS penalty,
		   eds.pick('{mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,mpesa,bank_transfer,bank_transfer,bank_transfer,bank_transfer,cash,cash,cheque,online,online}',
					eds.uniform(seed, 32, payment_id)) AS method,
		   date_trunc('second', disbursed_at
			 + r * least(interval '30 days', (v_last_day - disbursed_at) / (k + 1))
			 + eds.uniform(seed, 33, payment_id) * interval '8 hours') AS paid_at
	  FROM split;

	INSERT INTO operational.loans
		(loan_id, customer_id, product_id, amount, interest_rate, tenure_months, status,
		 outstanding_balance, disbursed_at, maturity_date, loan_officer, branch_code,
		 created_at, updated_at)
	SELECT l.loan_id, l.customer_id, l.product_id, l.amount, l.interest_rate, l.tenure_months,
		   CASE WHEN t.paid IS NULL THEN 'pending'
				WHEN l.amount - t.paid = 0 THEN 'repaid'
				WHEN l.fate > 0.92 THEN 'defaulted'
				ELSE 'active' END,
		   l.amount - coalesce(t.paid, 0),
		   CASE WHEN t.paid IS NULL THEN NULL ELSE l.disbursed_at END,
		   CASE WHEN t.paid IS NULL THEN NULL
				ELSE ((l.disbursed_at AT TIME ZONE 'UTC') + l.tenure_months * interval '1 month')::date END,
		   l.loan_officer,
		   ('{"Nairobi": "NBO", "Mombasa": "MSA", "Kisumu": "KSM", "Nakuru": "NKR", "Eldoret": "ELD", "Thika": "THK", "Nyeri": "NYR", "Machakos": "MKS", "Meru": "MRU", "Kakamega": "KKG", "Malindi": "MLD", "Garissa": "GRS"}'::jsonb ->> l.city)
			 || '-' || lpad(l.branch_no::text, 2, '0'),
		   l.requested_at, l.requested_at
	  FROM eds_gen_loans l
	  LEFT JOIN (SELECT loan_id, sum(principal) AS paid
				   FROM eds_gen_lines GROUP BY loan_id) t USING (loan_id)
	 ORDER BY l.loan_id;
	GET DIAGNOSTICS v_loans = ROW_COUNT;

	INSERT INTO operational.payments
		(payment_id, loan_id, amount, principal_portion, interest_portion, penalty_portion,
		 payment_method, payment_date, reference, created_at, updated_at)
	SELECT payment_id, loan_id, principal + interest + penalty, principal, interest, penalty,
		   method, paid_at, 'DEMO-' || payment_id, paid_at, paid_at
	  FROM eds_gen_lines
	 ORDER BY payment_id;
	GET DIAGNOSTICS v_payments = ROW_COUNT;

	-- Later inserts (post_payment, the app) continue after the demo ids.
	PERFORM setval('operational.customers_customer_id_seq', greatest(customers, 1));
	PERFORM setval('operational.loans_loan_id_seq', greatest(loans, 1), loans > 0);
	PERFORM setval('operational.payments_payment_id_seq', greatest(payments, 1), payments > 0);

	DROP TABLE eds_gen_loans, eds_gen_payments, eds_gen_lines;

	table_name := 'operational.customers'; rows_inserted := customers; RETURN NEXT;
	table_name := 'operational.loans'; rows_inserted := v_loans; RETURN NEXT;
	table_name := 'operational.payments'; rows_inserted := v_payments; RETURN NEXT;
END
$gen$;
COMMENT ON FUNCTION eds_generate_demo_data(integer, integer, integer, integer) IS
	'Fills empty operational tables with realistic, deterministic demo data (Kenyan customers, branches, M-Pesa payments, 2023-2026)';
REVOKE ALL ON FUNCTION eds_generate_demo_data(integer, integer, integer, integer) FROM PUBLIC;

-- ===========================================================================
-- Change capture (source side): one row per changed key, per transaction
-- ===========================================================================
CREATE TABLE eds.change_log (
	event_id	bigserial PRIMARY KEY,
	txid		xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
	table_name	text NOT NULL,
	op			"char" NOT NULL CHECK (op IN ('I', 'U', 'D')),
	pk			bigint NOT NULL
);
COMMENT ON TABLE eds.change_log IS 'Keys changed on the source, with the 64-bit id of the changing transaction; read by eds_run_etl() through xid8 snapshot watermarks';
CREATE INDEX change_log_txid_idx ON eds.change_log (txid);

-- Who extracted what from this source, up to where (written by the ETL).
CREATE TABLE eds.etl_consumers (
	consumer		text PRIMARY KEY,
	watermark		xid8 NOT NULL,
	last_extract_at	timestamptz NOT NULL,
	last_run_id		bigint,
	rows_read		bigint,
	extracted_by	text NOT NULL
);
COMMENT ON TABLE eds.etl_consumers IS 'Each warehouse that extracts from this source: how far it has read (its xid8 watermark), when, as whom';

-- The change log is purged below this point; a consumer behind it must
-- reload.  One row once anything was purged (none means nothing was).
CREATE TABLE eds.change_log_horizon (
	id			integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	purged_upto	xid8 NOT NULL
);
COMMENT ON TABLE eds.change_log_horizon IS 'The change log holds no entries below purged_upto';

CREATE FUNCTION eds.capture_change() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_capture_change';
COMMENT ON FUNCTION eds.capture_change() IS
	'AFTER INSERT/UPDATE/DELETE row trigger: records the changed key in eds.change_log for the ETL';
REVOKE ALL ON FUNCTION eds.capture_change() FROM PUBLIC;

CREATE TRIGGER customers_capture AFTER INSERT OR UPDATE OR DELETE ON operational.customers
	FOR EACH ROW EXECUTE FUNCTION eds.capture_change();
CREATE TRIGGER loans_capture AFTER INSERT OR UPDATE OR DELETE ON operational.loans
	FOR EACH ROW EXECUTE FUNCTION eds.capture_change();
CREATE TRIGGER payments_capture AFTER INSERT OR UPDATE OR DELETE ON operational.payments
	FOR EACH ROW EXECUTE FUNCTION eds.capture_change();

-- ===========================================================================
-- Warehouse side
-- ===========================================================================
CREATE SCHEMA staging;
COMMENT ON SCHEMA staging IS 'eds: rows extracted by the running ETL, before they are merged';
REVOKE ALL ON SCHEMA staging FROM PUBLIC;
CREATE SCHEMA warehouse;
COMMENT ON SCHEMA warehouse IS 'eds: the star schema that analysts query';
CREATE SCHEMA audit;
COMMENT ON SCHEMA audit IS 'eds: ETL run history and rejected rows';

-- Why a staged payment cannot go into the facts, or NULL when it can.
CREATE FUNCTION eds.payment_problem(loan_id bigint, amount numeric, principal numeric, interest numeric,
									penalty numeric, paid_at timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
	SELECT CASE
		WHEN loan_id IS NULL OR amount IS NULL OR paid_at IS NULL
			 OR principal IS NULL OR interest IS NULL OR penalty IS NULL
			THEN 'a required value is missing'
		WHEN amount <= 0 THEN 'amount is not positive'
		WHEN least(principal, interest, penalty) < 0 THEN 'a portion is negative'
		WHEN amount <> principal + interest + penalty
			THEN 'principal, interest and penalty do not add up to the amount'
		WHEN paid_at < '2018-01-01 00:00+00' OR paid_at >= '2051-01-01 00:00+00'
			THEN 'payment date is outside the calendar (2018-2050)'
	END;
END;
COMMENT ON FUNCTION eds.payment_problem(bigint, numeric, numeric, numeric, numeric, timestamptz) IS
	'Why a staged payment cannot be loaded (NULL when it can): the ETL''s validation rules';


-- Staging: unlogged, emptied at the start of each run.
CREATE UNLOGGED TABLE staging.stg_loan_products (
	product_id integer, product_name text, product_type text
);
CREATE UNLOGGED TABLE staging.stg_customers (
	customer_id bigint, full_name text, email text, phone text, national_id text, city text,
	country text, segment text, created_at timestamptz, updated_at timestamptz,
	is_deleted boolean, touched boolean, version_from timestamptz
);
CREATE UNLOGGED TABLE staging.stg_loans (
	loan_id bigint, customer_id bigint, product_id integer, amount numeric(14,2),
	interest_rate numeric(5,2), tenure_months integer, status text, outstanding_balance numeric(14,2),
	disbursed_at timestamptz, maturity_date date, loan_officer text, branch_code text,
	created_at timestamptz, updated_at timestamptz, is_deleted boolean, touched boolean
);
CREATE UNLOGGED TABLE staging.stg_payments (
	payment_id bigint, loan_id bigint, amount numeric(14,2), principal_portion numeric(14,2),
	interest_portion numeric(14,2), penalty_portion numeric(14,2), payment_method text,
	payment_date timestamptz, created_at timestamptz, updated_at timestamptz,
	is_deleted boolean, touched boolean,
	-- Computed once, as COPY stores the row; ANALYZE then tells the planner
	-- how many rows will load (a filter on the function call it would guess).
	problem text GENERATED ALWAYS AS (
		CASE WHEN NOT is_deleted THEN
			eds.payment_problem(loan_id, amount, principal_portion, interest_portion,
								penalty_portion, payment_date)
		END) STORED
);

CREATE TABLE warehouse.dim_date (
	date_sk			integer PRIMARY KEY,
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

CREATE TABLE warehouse.dim_customer (
	customer_sk		bigserial PRIMARY KEY,
	customer_id		bigint NOT NULL,
	version_no		integer NOT NULL,
	full_name		text NOT NULL,
	email			text,
	phone			text,
	city			text,
	country			text,
	segment			text NOT NULL,
	effective_from	timestamptz NOT NULL,
	effective_to	timestamptz NOT NULL DEFAULT 'infinity',
	is_current		boolean NOT NULL DEFAULT true,
	is_deleted		boolean NOT NULL DEFAULT false,
	UNIQUE (customer_id, version_no),
	CHECK (effective_to >= effective_from)
);
CREATE UNIQUE INDEX dim_customer_current_idx ON warehouse.dim_customer (customer_id) WHERE is_current;

CREATE TABLE warehouse.dim_loan (
	loan_sk			bigserial PRIMARY KEY,
	loan_id			bigint NOT NULL UNIQUE,
	customer_id		bigint NOT NULL,
	product_name	text,
	product_type	text,
	amount			numeric(14,2) NOT NULL,
	interest_rate	numeric(5,2) NOT NULL,
	tenure_months	integer NOT NULL,
	status			text NOT NULL,
	branch_code		text,
	loan_officer	text,
	disbursed_at	timestamptz,
	maturity_date	date,
	is_deleted		boolean NOT NULL DEFAULT false
);

CREATE TABLE warehouse.dim_payment_method (
	method_sk		smallint PRIMARY KEY,
	method_code		text NOT NULL UNIQUE,
	method_name		text NOT NULL
);
INSERT INTO warehouse.dim_payment_method VALUES
	(0, 'unknown', 'Unknown'),
	(1, 'mpesa', 'M-Pesa'),
	(2, 'bank_transfer', 'Bank transfer'),
	(3, 'cash', 'Cash'),
	(4, 'cheque', 'Cheque'),
	(5, 'online', 'Online');

CREATE TABLE warehouse.fact_payments (
	payment_id			bigint NOT NULL,
	payment_date		timestamptz NOT NULL,
	date_sk				integer NOT NULL,
	customer_sk			bigint NOT NULL,
	loan_sk				bigint NOT NULL,
	method_sk			smallint NOT NULL,
	customer_id			bigint NOT NULL,
	loan_id				bigint NOT NULL,
	payment_amount		numeric(14,2) NOT NULL,
	principal_portion	numeric(14,2) NOT NULL,
	interest_portion	numeric(14,2) NOT NULL,
	penalty_portion		numeric(14,2) NOT NULL,
	customer_segment	text,
	loan_status			text,
	branch_code			text
) PARTITION BY RANGE (payment_date);
-- No foreign keys: the ETL derives date_sk from payment_date, which it keeps
-- within dim_date's calendar (eds.payment_problem), and resolves the other
-- keys by joining the dimensions.  A foreign key would re-check each of a
-- first load's million rows one by one, and lock the dim_date row it points
-- to: most of a first load's time (docs/performance.md).
-- No index on the parent: each monthly partition gets its key and indexes
-- from the ETL when it is created (eds.ensure_fact_partitions).  Indexes on
-- this extension-owned parent would make pg_dump's output of the
-- partitions, which are ordinary tables, collide with the ones ATTACH
-- creates, and a restore would stop on them.

CREATE TABLE warehouse.fact_loans (
	loan_id				bigint PRIMARY KEY,
	loan_sk				bigint NOT NULL,
	customer_sk			bigint NOT NULL,
	customer_id			bigint NOT NULL,
	principal_amount	numeric(14,2) NOT NULL,
	outstanding_balance	numeric(14,2) NOT NULL,
	total_paid			numeric(16,2) NOT NULL DEFAULT 0,
	payment_count		bigint NOT NULL DEFAULT 0,
	loan_status			text NOT NULL,
	customer_segment	text,
	branch_code			text,
	disbursed_at		timestamptz,
	is_active			boolean NOT NULL,
	is_defaulted		boolean NOT NULL,
	is_repaid			boolean NOT NULL,
	last_payment_date	timestamptz
) WITH (fillfactor = 80);	-- every run updates rows in place: room for HOT updates
CREATE INDEX fact_loans_customer_id_idx ON warehouse.fact_loans (customer_id);

-- Summaries behind the analysts' views, kept by each ETL run from what it
-- changed, so a dashboard reads thousands of rows instead of every fact
-- (docs/performance.md).  Internal: analysts read them through the views.
CREATE TABLE eds.payments_by_month (
	month			date NOT NULL,
	branch_code		text,
	method_sk		smallint NOT NULL,
	payment_count	bigint NOT NULL,
	total_amount	numeric NOT NULL,
	principal		numeric NOT NULL,
	interest		numeric NOT NULL,
	penalty			numeric NOT NULL
);
CREATE INDEX payments_by_month_month_idx ON eds.payments_by_month (month);
COMMENT ON TABLE eds.payments_by_month IS 'Summary of warehouse.fact_payments per month (UTC), branch and method, kept by the ETL for the views';

CREATE TABLE eds.customer_payment_totals (
	customer_id			bigint PRIMARY KEY,
	total_paid			numeric NOT NULL,
	payment_count		bigint NOT NULL,
	loan_count			bigint NOT NULL,
	last_payment_date	timestamptz
);
CREATE INDEX customer_payment_totals_rank_idx ON eds.customer_payment_totals (total_paid DESC, customer_id);
COMMENT ON TABLE eds.customer_payment_totals IS 'Payment totals per customer who has paid, from warehouse.fact_loans, kept by the ETL for vw_top_customers';

-- ETL state and history.  etl_state has its one row from the first load on
-- (no row: nothing loaded yet), so pg_dump can carry it.
CREATE TABLE audit.etl_state (
	id				integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	watermark		xid8 NOT NULL,
	probe_inserts	boolean NOT NULL DEFAULT false,
	last_success_run bigint
);
COMMENT ON TABLE audit.etl_state IS 'Where the warehouse stands: the source xid8 watermark it has loaded up to';

CREATE TABLE audit.etl_runs (
	run_id			bigserial PRIMARY KEY,
	status			text NOT NULL CHECK (status IN ('running', 'success', 'failed', 'skipped')),
	run_started_at	timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	run_finished_at	timestamptz,
	mode			text,
	requested_by	text NOT NULL DEFAULT pg_catalog.session_user(),
	request_token	bigint,
	source_server	text,
	source_is_replica boolean,
	from_txid		xid8,
	to_txid			xid8,
	source_lsn		pg_lsn,
	source_time		timestamptz,
	source_lag		interval,
	rows_read		bigint,
	rows_inserted	bigint,
	rows_updated	bigint,
	rows_deleted	bigint,
	rows_rejected	bigint,
	table_counts	jsonb,
	phase_ms		jsonb,
	error_message	text,
	error_detail	text,
	note			text
);
CREATE INDEX etl_runs_started_idx ON audit.etl_runs (run_started_at);

CREATE TABLE audit.etl_rejects (
	reject_id	bigserial PRIMARY KEY,
	run_id		bigint NOT NULL,
	table_name	text NOT NULL,
	source_key	bigint,
	reason		text NOT NULL,
	row_data	jsonb,
	rejected_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX etl_rejects_run_idx ON audit.etl_rejects (run_id);

SELECT pg_catalog.pg_extension_config_dump('eds.change_log', '');
SELECT pg_catalog.pg_extension_config_dump('eds.change_log_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eds.etl_consumers', '');
SELECT pg_catalog.pg_extension_config_dump('warehouse.dim_customer', '');
SELECT pg_catalog.pg_extension_config_dump('warehouse.dim_customer_customer_sk_seq', '');
SELECT pg_catalog.pg_extension_config_dump('warehouse.dim_loan', '');
SELECT pg_catalog.pg_extension_config_dump('warehouse.dim_loan_loan_sk_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eds.change_log_horizon', '');
SELECT pg_catalog.pg_extension_config_dump('audit.etl_state', '');
SELECT pg_catalog.pg_extension_config_dump('warehouse.fact_loans', '');
SELECT pg_catalog.pg_extension_config_dump('eds.payments_by_month', '');
SELECT pg_catalog.pg_extension_config_dump('eds.customer_payment_totals', '');
SELECT pg_catalog.pg_extension_config_dump('audit.etl_runs', '');
SELECT pg_catalog.pg_extension_config_dump('audit.etl_runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audit.etl_rejects', '');
SELECT pg_catalog.pg_extension_config_dump('audit.etl_rejects_reject_id_seq', '');

-- ===========================================================================
-- Warehouse: documentation, analyst views, and the analysts' role
-- ===========================================================================

-- ---------------------------------------------------------------------------
-- Table and column comments (Metabase shows them as descriptions)
-- ---------------------------------------------------------------------------
COMMENT ON TABLE warehouse.dim_date IS
	'Calendar: one row per day from 2018-01-01 to 2050-12-31. Join facts to it on date_sk to group by month, quarter, weekday and so on';
COMMENT ON COLUMN warehouse.dim_date.date_sk IS 'Date key: the date as the number YYYYMMDD, e.g. 20240131';
COMMENT ON COLUMN warehouse.dim_date.full_date IS 'The date itself';
COMMENT ON COLUMN warehouse.dim_date.day IS 'Day of the month, 1 to 31';
COMMENT ON COLUMN warehouse.dim_date.month IS 'Month number, 1 (January) to 12 (December)';
COMMENT ON COLUMN warehouse.dim_date.month_name IS 'Month name in English, e.g. January';
COMMENT ON COLUMN warehouse.dim_date.quarter IS 'Quarter of the year, 1 to 4';
COMMENT ON COLUMN warehouse.dim_date.year IS 'Calendar year, e.g. 2024';
COMMENT ON COLUMN warehouse.dim_date.week_of_year IS 'ISO week number, 1 to 53 (weeks start on Monday)';
COMMENT ON COLUMN warehouse.dim_date.day_name IS 'Weekday name in English, e.g. Monday';
COMMENT ON COLUMN warehouse.dim_date.is_weekend IS 'True on Saturdays and Sundays';
COMMENT ON COLUMN warehouse.dim_date.is_month_end IS 'True on the last day of the month';

COMMENT ON TABLE warehouse.dim_customer IS
	'Customers (borrowers), with history: a new version (row) is added whenever the name, city or segment changes, or the customer is deleted. For the customer as they are now, filter on is_current';
COMMENT ON COLUMN warehouse.dim_customer.customer_sk IS 'Warehouse key of this version of the customer; facts point to the version in effect when they happened';
COMMENT ON COLUMN warehouse.dim_customer.customer_id IS 'Customer number in the loan system; the same for every version of a customer';
COMMENT ON COLUMN warehouse.dim_customer.version_no IS 'Version of the customer: 1 for the first, then 2, 3, ... each time the name, city or segment changed or the customer was deleted';
COMMENT ON COLUMN warehouse.dim_customer.full_name IS 'Name of the person or business, as of this version';
COMMENT ON COLUMN warehouse.dim_customer.email IS 'E-mail address; corrections overwrite the current version (no new version is made)';
COMMENT ON COLUMN warehouse.dim_customer.phone IS 'Phone number; corrections overwrite the current version (no new version is made)';
COMMENT ON COLUMN warehouse.dim_customer.city IS 'City, as of this version';
COMMENT ON COLUMN warehouse.dim_customer.country IS 'Country; corrections overwrite the current version (no new version is made)';
COMMENT ON COLUMN warehouse.dim_customer.segment IS 'Customer segment as of this version: retail, sme or corporate';
COMMENT ON COLUMN warehouse.dim_customer.effective_from IS 'When this version took effect (inclusive). Version 1 starts when the customer was created and also covers anything earlier';
COMMENT ON COLUMN warehouse.dim_customer.effective_to IS 'When this version was replaced (exclusive: the version is valid before this instant); ''infinity'' for the current version';
COMMENT ON COLUMN warehouse.dim_customer.is_current IS 'True on the latest version of each customer (exactly one per customer)';
COMMENT ON COLUMN warehouse.dim_customer.is_deleted IS 'True if the customer was deleted in the loan system: this version records the deletion and keeps the last known name, city and segment';

COMMENT ON TABLE warehouse.dim_loan IS
	'Loans, one row each, with their current terms and status (changes overwrite the row; no history). Loans deleted in the loan system are kept and flagged is_deleted';
COMMENT ON COLUMN warehouse.dim_loan.loan_sk IS 'Warehouse key of the loan';
COMMENT ON COLUMN warehouse.dim_loan.loan_id IS 'Loan number in the loan system';
COMMENT ON COLUMN warehouse.dim_loan.customer_id IS 'Customer number of the borrower (matches dim_customer.customer_id; use is_current for their present details)';
COMMENT ON COLUMN warehouse.dim_loan.product_name IS 'Loan product, e.g. Personal Loan, Mortgage';
COMMENT ON COLUMN warehouse.dim_loan.product_type IS 'Kind of product: personal, business, asset or mortgage';
COMMENT ON COLUMN warehouse.dim_loan.amount IS 'Principal lent (the loan amount)';
COMMENT ON COLUMN warehouse.dim_loan.interest_rate IS 'Annual interest rate in percent';
COMMENT ON COLUMN warehouse.dim_loan.tenure_months IS 'Length of the loan in months';
COMMENT ON COLUMN warehouse.dim_loan.status IS 'Current status: pending (not yet disbursed), active, repaid or defaulted';
COMMENT ON COLUMN warehouse.dim_loan.branch_code IS 'Branch that owns the loan, e.g. NBO-01';
COMMENT ON COLUMN warehouse.dim_loan.loan_officer IS 'Code of the loan officer in charge, e.g. LO-007';
COMMENT ON COLUMN warehouse.dim_loan.disbursed_at IS 'When the money was paid out; empty while the loan is pending';
COMMENT ON COLUMN warehouse.dim_loan.maturity_date IS 'Date the loan is due to be fully repaid';
COMMENT ON COLUMN warehouse.dim_loan.is_deleted IS 'True if the loan was deleted in the loan system (it is then also removed from fact_loans)';

COMMENT ON TABLE warehouse.dim_payment_method IS 'Ways a payment can be made (M-Pesa, bank transfer, cash, cheque, online)';
COMMENT ON COLUMN warehouse.dim_payment_method.method_sk IS 'Warehouse key of the method; 0 is Unknown';
COMMENT ON COLUMN warehouse.dim_payment_method.method_code IS 'Method code as used by the loan system, e.g. mpesa';
COMMENT ON COLUMN warehouse.dim_payment_method.method_name IS 'Method name for display, e.g. M-Pesa';

COMMENT ON TABLE warehouse.fact_payments IS
	'Repayments: one row per payment, split into principal, interest and penalty. Stored in monthly partitions (by payment time, UTC) that the ETL creates; query this table, not the partitions';
COMMENT ON COLUMN warehouse.fact_payments.payment_id IS 'Payment number in the loan system';
COMMENT ON COLUMN warehouse.fact_payments.payment_date IS 'When the payment was made (date and time)';
COMMENT ON COLUMN warehouse.fact_payments.date_sk IS 'Day of the payment (UTC) as a dim_date key, YYYYMMDD';
COMMENT ON COLUMN warehouse.fact_payments.customer_sk IS 'The version of the customer (dim_customer) in effect when the payment was made';
COMMENT ON COLUMN warehouse.fact_payments.loan_sk IS 'The loan paid (dim_loan)';
COMMENT ON COLUMN warehouse.fact_payments.method_sk IS 'How it was paid (dim_payment_method); 0 if unknown';
COMMENT ON COLUMN warehouse.fact_payments.customer_id IS 'Customer number of the borrower in the loan system';
COMMENT ON COLUMN warehouse.fact_payments.loan_id IS 'Loan number in the loan system';
COMMENT ON COLUMN warehouse.fact_payments.payment_amount IS 'Total amount paid: principal + interest + penalty';
COMMENT ON COLUMN warehouse.fact_payments.principal_portion IS 'Part of the payment that repaid principal (lowers the balance owed)';
COMMENT ON COLUMN warehouse.fact_payments.interest_portion IS 'Part of the payment that paid interest';
COMMENT ON COLUMN warehouse.fact_payments.penalty_portion IS 'Part of the payment that paid late-payment penalties';
COMMENT ON COLUMN warehouse.fact_payments.customer_segment IS 'The customer''s segment (retail, sme, corporate) when the payment was made';
COMMENT ON COLUMN warehouse.fact_payments.loan_status IS 'The loan''s current status (pending, active, repaid, defaulted), not its status at the time of payment';
COMMENT ON COLUMN warehouse.fact_payments.branch_code IS 'The branch that currently owns the loan, e.g. NBO-01';

COMMENT ON TABLE warehouse.fact_loans IS
	'Loan portfolio: one row per loan with its current balance, status and payment totals (loans deleted in the loan system are removed)';
COMMENT ON COLUMN warehouse.fact_loans.loan_id IS 'Loan number in the loan system';
COMMENT ON COLUMN warehouse.fact_loans.loan_sk IS 'The loan (dim_loan)';
COMMENT ON COLUMN warehouse.fact_loans.customer_sk IS 'The borrower''s current version (dim_customer)';
COMMENT ON COLUMN warehouse.fact_loans.customer_id IS 'Customer number of the borrower in the loan system';
COMMENT ON COLUMN warehouse.fact_loans.principal_amount IS 'Principal lent (the loan amount)';
COMMENT ON COLUMN warehouse.fact_loans.outstanding_balance IS 'Principal still owed';
COMMENT ON COLUMN warehouse.fact_loans.total_paid IS 'Sum of all payments on the loan so far (principal, interest and penalties)';
COMMENT ON COLUMN warehouse.fact_loans.payment_count IS 'Number of payments on the loan so far';
COMMENT ON COLUMN warehouse.fact_loans.loan_status IS 'Current status: pending (not yet disbursed), active, repaid or defaulted';
COMMENT ON COLUMN warehouse.fact_loans.customer_segment IS 'The borrower''s current segment: retail, sme or corporate';
COMMENT ON COLUMN warehouse.fact_loans.branch_code IS 'Branch that owns the loan, e.g. NBO-01';
COMMENT ON COLUMN warehouse.fact_loans.disbursed_at IS 'When the money was paid out; empty while the loan is pending';
COMMENT ON COLUMN warehouse.fact_loans.is_active IS 'True if the loan is being repaid (status active)';
COMMENT ON COLUMN warehouse.fact_loans.is_defaulted IS 'True if the loan has defaulted (status defaulted)';
COMMENT ON COLUMN warehouse.fact_loans.is_repaid IS 'True if the loan is fully repaid (status repaid)';
COMMENT ON COLUMN warehouse.fact_loans.last_payment_date IS 'Date and time of the latest payment on the loan; empty if none';

COMMENT ON TABLE staging.stg_loan_products IS 'ETL scratch: loan products extracted by the current run (emptied at the start of each run)';
COMMENT ON TABLE staging.stg_customers IS 'ETL scratch: customers extracted by the current run, or their deletion (emptied at the start of each run)';
COMMENT ON TABLE staging.stg_loans IS 'ETL scratch: loans extracted by the current run, or their deletion (emptied at the start of each run)';
COMMENT ON TABLE staging.stg_payments IS 'ETL scratch: payments extracted by the current run, or their deletion, with the reason when rejected (emptied at the start of each run)';

COMMENT ON TABLE audit.etl_runs IS 'One row per ETL run (eds_run_etl()): when, from which source, how far, how many rows, and how it ended';
COMMENT ON COLUMN audit.etl_runs.run_id IS 'Run number, increasing';
COMMENT ON COLUMN audit.etl_runs.status IS 'running (in progress), success, failed (see error_message) or skipped (another run was in progress)';
COMMENT ON COLUMN audit.etl_runs.run_started_at IS 'When the run started';
COMMENT ON COLUMN audit.etl_runs.run_finished_at IS 'When the run ended; empty while running';
COMMENT ON COLUMN audit.etl_runs.mode IS 'full (first load of an empty warehouse) or incremental (only what changed since the last run)';
COMMENT ON COLUMN audit.etl_runs.requested_by IS 'Database user who started the run (the pg_cron job''s owner for scheduled runs)';
COMMENT ON COLUMN audit.etl_runs.request_token IS 'Internal: matches the run to the eds_run_etl() call that asked for it';
COMMENT ON COLUMN audit.etl_runs.source_server IS 'Connection options of the source read (host, port, dbname, user; never the password)';
COMMENT ON COLUMN audit.etl_runs.source_is_replica IS 'True if the source was a read-only streaming replica rather than the primary';
COMMENT ON COLUMN audit.etl_runs.from_txid IS 'Start of the source transaction window (xid8) this run loaded: the previous watermark; empty for a full load';
COMMENT ON COLUMN audit.etl_runs.to_txid IS 'End of the source transaction window (xid8, exclusive) this run loaded: the new watermark, where the next run starts';
COMMENT ON COLUMN audit.etl_runs.source_lsn IS 'Source WAL position the loaded data is consistent as of';
COMMENT ON COLUMN audit.etl_runs.source_time IS 'Source clock time the loaded data is consistent as of';
COMMENT ON COLUMN audit.etl_runs.source_lag IS 'When the source is a replica: the age of the newest primary heartbeat it had replayed (assumes synchronized clocks); NULL on a primary';
COMMENT ON COLUMN audit.etl_runs.rows_read IS 'Rows read from the source, all tables together';
COMMENT ON COLUMN audit.etl_runs.rows_inserted IS 'Rows added to the warehouse, all tables together';
COMMENT ON COLUMN audit.etl_runs.rows_updated IS 'Rows changed in the warehouse (including new customer versions), all tables together';
COMMENT ON COLUMN audit.etl_runs.rows_deleted IS 'Rows deleted or flagged deleted in the warehouse, all tables together';
COMMENT ON COLUMN audit.etl_runs.rows_rejected IS 'Source payments the warehouse refused (listed in audit.etl_rejects)';
COMMENT ON COLUMN audit.etl_runs.table_counts IS 'Per table (customers, loans, payments, fact_loans): rows read, inserted, updated, deleted and rejected, as JSON';
COMMENT ON COLUMN audit.etl_runs.phase_ms IS 'Milliseconds spent in each phase (connect, extract, load), as JSON';
COMMENT ON COLUMN audit.etl_runs.error_message IS 'Why the run failed';
COMMENT ON COLUMN audit.etl_runs.error_detail IS 'More about the failure, or a hint to fix it';
COMMENT ON COLUMN audit.etl_runs.note IS 'Remark on an unusual run, e.g. why it was skipped or loaded nothing';

COMMENT ON COLUMN audit.etl_state.id IS 'Always 1: the table has at most one row';
COMMENT ON COLUMN audit.etl_state.watermark IS 'Source transaction id (xid8) the warehouse has loaded up to (exclusive); the next run loads changes from here on';
COMMENT ON COLUMN audit.etl_state.probe_inserts IS 'Internal: true when the next run must check whether new source payments are already in the warehouse (after a first load)';
COMMENT ON COLUMN audit.etl_state.last_success_run IS 'The last successful run (audit.etl_runs.run_id)';

COMMENT ON TABLE audit.etl_rejects IS 'Source rows an ETL run could not load, with the reason; fix them on the source and the next run picks them up';
COMMENT ON COLUMN audit.etl_rejects.reject_id IS 'Reject number, increasing';
COMMENT ON COLUMN audit.etl_rejects.run_id IS 'The run that rejected the row (audit.etl_runs)';
COMMENT ON COLUMN audit.etl_rejects.table_name IS 'Source table of the row, e.g. payments';
COMMENT ON COLUMN audit.etl_rejects.source_key IS 'Key of the row on the source, e.g. the payment number';
COMMENT ON COLUMN audit.etl_rejects.reason IS 'Why the row was rejected';
COMMENT ON COLUMN audit.etl_rejects.row_data IS 'The rejected row as read from the source, as JSON';
COMMENT ON COLUMN audit.etl_rejects.rejected_at IS 'When the row was rejected';

-- ---------------------------------------------------------------------------
-- Views for analysts (Metabase)
-- ---------------------------------------------------------------------------
-- The views over payments read the ETL's summaries (eds.payments_by_month,
-- eds.customer_payment_totals), not the facts: eds_reconcile() checks that
-- the two agree.
CREATE VIEW warehouse.vw_monthly_revenue AS
SELECT d.year, d.month, d.month_name,
	   sum(s.total_amount) AS total_revenue,
	   sum(s.principal) AS principal_collected,
	   sum(s.interest) AS interest_collected,
	   sum(s.penalty) AS penalty_collected,
	   sum(s.payment_count)::bigint AS payment_count
  FROM eds.payments_by_month s
  JOIN warehouse.dim_date d ON d.full_date = s.month
 GROUP BY d.year, d.month, d.month_name;
COMMENT ON VIEW warehouse.vw_monthly_revenue IS
	'Money collected per calendar month (UTC), split into principal, interest and penalties; one row per month that has payments';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.year IS 'Calendar year';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.month IS 'Month number, 1 to 12 (sort by year, month)';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.month_name IS 'Month name, e.g. January';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.total_revenue IS 'Total of all payments received in the month';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.principal_collected IS 'Part of the month''s payments that repaid principal';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.interest_collected IS 'Part of the month''s payments that paid interest';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.penalty_collected IS 'Part of the month''s payments that paid late-payment penalties';
COMMENT ON COLUMN warehouse.vw_monthly_revenue.payment_count IS 'Number of payments received in the month';

-- Attributes from each customer's current version (is_current), which for a
-- deleted customer is the version recording the deletion, carrying their
-- last known name, segment and city.
CREATE VIEW warehouse.vw_top_customers AS
SELECT t.customer_id, c.full_name, c.segment, c.city,
	   t.total_paid, t.payment_count, t.loan_count, t.last_payment_date
  FROM eds.customer_payment_totals t
  LEFT JOIN warehouse.dim_customer c ON c.customer_id = t.customer_id AND c.is_current
 ORDER BY t.total_paid DESC, t.customer_id;
COMMENT ON VIEW warehouse.vw_top_customers IS
	'Customers who have paid, biggest payers first: total paid, number of payments and loans, last payment. Name, segment and city are the customer''s current ones (for a deleted customer, the last known ones)';
COMMENT ON COLUMN warehouse.vw_top_customers.customer_id IS 'Customer number in the loan system';
COMMENT ON COLUMN warehouse.vw_top_customers.full_name IS 'Name of the person or business (current)';
COMMENT ON COLUMN warehouse.vw_top_customers.segment IS 'Customer segment (current): retail, sme or corporate';
COMMENT ON COLUMN warehouse.vw_top_customers.city IS 'City (current)';
COMMENT ON COLUMN warehouse.vw_top_customers.total_paid IS 'Total of all the customer''s payments, on all loans';
COMMENT ON COLUMN warehouse.vw_top_customers.payment_count IS 'Number of payments the customer made';
COMMENT ON COLUMN warehouse.vw_top_customers.loan_count IS 'Number of different loans the customer made payments on';
COMMENT ON COLUMN warehouse.vw_top_customers.last_payment_date IS 'Date and time of the customer''s latest payment';

CREATE VIEW warehouse.vw_loan_status_distribution AS
SELECT f.loan_status,
	   count(*) AS loan_count,
	   sum(f.principal_amount) AS total_principal,
	   sum(f.outstanding_balance) AS total_outstanding,
	   round(100.0 * count(*) / NULLIF(sum(count(*)) OVER (), 0), 2) AS share_of_loans
  FROM warehouse.fact_loans f
 GROUP BY f.loan_status;
COMMENT ON VIEW warehouse.vw_loan_status_distribution IS
	'Loans by current status (pending, active, repaid, defaulted): how many, how much was lent and is still owed, and the share of all loans';
COMMENT ON COLUMN warehouse.vw_loan_status_distribution.loan_status IS 'Loan status: pending (not yet disbursed), active, repaid or defaulted';
COMMENT ON COLUMN warehouse.vw_loan_status_distribution.loan_count IS 'Number of loans with this status';
COMMENT ON COLUMN warehouse.vw_loan_status_distribution.total_principal IS 'Total principal lent on these loans';
COMMENT ON COLUMN warehouse.vw_loan_status_distribution.total_outstanding IS 'Total principal still owed on these loans';
COMMENT ON COLUMN warehouse.vw_loan_status_distribution.share_of_loans IS 'Percentage of all loans that have this status (0 to 100, two decimals)';

CREATE VIEW warehouse.vw_payment_by_method AS
SELECT m.method_code, m.method_name,
	   sum(s.payment_count)::bigint AS payment_count,
	   sum(s.total_amount) AS total_amount,
	   round(100.0 * sum(s.total_amount) / NULLIF(sum(sum(s.total_amount)) OVER (), 0), 2) AS share_of_amount
  FROM eds.payments_by_month s
  JOIN warehouse.dim_payment_method m ON m.method_sk = s.method_sk
 GROUP BY m.method_code, m.method_name;
COMMENT ON VIEW warehouse.vw_payment_by_method IS
	'Payments by payment method (M-Pesa, bank transfer, cash, ...): how many, how much, and the share of all money received; only methods that were used';
COMMENT ON COLUMN warehouse.vw_payment_by_method.method_code IS 'Method code as used by the loan system, e.g. mpesa';
COMMENT ON COLUMN warehouse.vw_payment_by_method.method_name IS 'Method name, e.g. M-Pesa';
COMMENT ON COLUMN warehouse.vw_payment_by_method.payment_count IS 'Number of payments made this way';
COMMENT ON COLUMN warehouse.vw_payment_by_method.total_amount IS 'Total amount paid this way';
COMMENT ON COLUMN warehouse.vw_payment_by_method.share_of_amount IS 'Percentage of all money received that was paid this way (0 to 100, two decimals)';

CREATE VIEW warehouse.vw_portfolio_by_segment AS
SELECT f.customer_segment AS segment,
	   count(*) AS loan_count,
	   sum(f.principal_amount) AS total_principal,
	   sum(f.outstanding_balance) AS total_outstanding,
	   count(*) FILTER (WHERE f.is_defaulted) AS defaulted_count,
	   round(100.0 * count(*) FILTER (WHERE f.is_defaulted) / NULLIF(count(*), 0), 2) AS default_rate,
	   count(*) FILTER (WHERE f.is_repaid) AS repaid_count
  FROM warehouse.fact_loans f
 GROUP BY f.customer_segment;
COMMENT ON VIEW warehouse.vw_portfolio_by_segment IS
	'Loan portfolio by the borrower''s current segment (retail, sme, corporate): loans, amounts lent and owed, defaults and repayments';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.segment IS 'Customer segment of the borrowers (current): retail, sme or corporate';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.loan_count IS 'Number of loans in the segment (all statuses)';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.total_principal IS 'Total principal lent to the segment';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.total_outstanding IS 'Total principal the segment still owes';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.defaulted_count IS 'Number of the segment''s loans that have defaulted';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.default_rate IS 'Percentage of the segment''s loans that have defaulted (0 to 100, two decimals)';
COMMENT ON COLUMN warehouse.vw_portfolio_by_segment.repaid_count IS 'Number of the segment''s loans that are fully repaid';

CREATE VIEW warehouse.vw_branch_collections AS
SELECT s.branch_code, d.year, d.month, d.month_name,
	   sum(s.total_amount) AS collected,
	   sum(s.payment_count)::bigint AS payment_count
  FROM eds.payments_by_month s
  JOIN warehouse.dim_date d ON d.full_date = s.month
 GROUP BY s.branch_code, d.year, d.month, d.month_name;
COMMENT ON VIEW warehouse.vw_branch_collections IS
	'Money collected per branch and calendar month (UTC); a payment counts for the branch that currently owns its loan';
COMMENT ON COLUMN warehouse.vw_branch_collections.branch_code IS 'Branch that owns the loans, e.g. NBO-01 (empty for loans without a branch)';
COMMENT ON COLUMN warehouse.vw_branch_collections.year IS 'Calendar year';
COMMENT ON COLUMN warehouse.vw_branch_collections.month IS 'Month number, 1 to 12 (sort by year, month)';
COMMENT ON COLUMN warehouse.vw_branch_collections.month_name IS 'Month name, e.g. January';
COMMENT ON COLUMN warehouse.vw_branch_collections.collected IS 'Total of the payments on the branch''s loans in the month';
COMMENT ON COLUMN warehouse.vw_branch_collections.payment_count IS 'Number of payments on the branch''s loans in the month';

-- ---------------------------------------------------------------------------
-- The analysts' group role (Metabase logs in as a member of it).  Like the
-- other group roles it is cluster-wide, not a member of the extension.
-- ---------------------------------------------------------------------------
DO $reader$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['warehouse_reader']
	LOOP
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) r) THEN
			EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
		END IF;
	END LOOP;
END
$reader$;

REVOKE ALL ON ALL TABLES IN SCHEMA warehouse, staging, audit FROM PUBLIC;

-- Read-only access to the star schema and its views; nothing on staging,
-- eds or operational.
GRANT USAGE ON SCHEMA warehouse TO warehouse_reader;
-- fact_payments is partitioned and the ETL creates its monthly partitions
-- later; SELECT on the parent is enough to read them all through it, so the
-- partitions themselves get no grant (and Metabase lists only the parent).
GRANT SELECT ON warehouse.dim_date, warehouse.dim_customer, warehouse.dim_loan,
	warehouse.dim_payment_method, warehouse.fact_payments, warehouse.fact_loans,
	warehouse.vw_monthly_revenue, warehouse.vw_top_customers,
	warehouse.vw_loan_status_distribution, warehouse.vw_payment_by_method,
	warehouse.vw_portfolio_by_segment, warehouse.vw_branch_collections
	TO warehouse_reader;

-- The ETL run history, for the dashboard; not the rejected rows (they hold
-- source data) and not the ETL state.
GRANT USAGE ON SCHEMA audit TO warehouse_reader;
GRANT SELECT ON audit.etl_runs TO warehouse_reader;

-- ===========================================================================
-- The ETL: source declaration, the merge, scheduling, progress
-- ===========================================================================

-- The source is a foreign server plus a user mapping, as for dblink and
-- postgres_fdw: the password lives in pg_user_mapping, which only
-- superusers and the mapping's own user can read.
CREATE FOREIGN DATA WRAPPER eds_fdw;
COMMENT ON FOREIGN DATA WRAPPER eds_fdw IS 'eds: holds the connection options of the ETL source (server eds_source)';

CREATE FUNCTION eds_set_source(conninfo text) RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_set_source';
COMMENT ON FUNCTION eds_set_source(text) IS
	'Declares the ETL source (the primary or a streaming replica) as foreign server eds_source with a user mapping for the current user; returns the server''s options without the password';
REVOKE ALL ON FUNCTION eds_set_source(text) FROM PUBLIC;

CREATE FUNCTION eds_run_etl(
	OUT run_id bigint, OUT status text, OUT mode text,
	OUT rows_read bigint, OUT rows_inserted bigint, OUT rows_updated bigint,
	OUT rows_deleted bigint, OUT rows_rejected bigint, OUT duration interval,
	OUT from_txid xid8, OUT to_txid xid8, OUT source_lsn pg_lsn, OUT source_time timestamptz,
	OUT table_counts jsonb, OUT error_message text)
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_run_etl';
COMMENT ON FUNCTION eds_run_etl() IS
	'Runs one ETL pass in a background worker and waits for it: extracts what changed on the source since the last run and merges it into the star schema in one transaction';
REVOKE ALL ON FUNCTION eds_run_etl() FROM PUBLIC;

-- Entry point of the background worker (not SQL-callable).
CREATE FUNCTION eds_etl_progress(
	OUT pid integer, OUT run_id bigint, OUT phase text, OUT table_name text,
	OUT rows_done bigint, OUT phase_started timestamptz, OUT run_started timestamptz)
	RETURNS SETOF record
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_etl_progress';
COMMENT ON FUNCTION eds_etl_progress() IS 'The ETL run in progress, if any: phase, table, rows done';
CREATE VIEW audit.etl_progress AS SELECT * FROM eds_etl_progress();
COMMENT ON VIEW audit.etl_progress IS 'The ETL run in progress: phase (connect, extract, load, finish), table and rows done so far';

-- Monthly partitions of fact_payments, created as the staged rows need them.
-- A first load creates them bare and indexes them after the insert
-- (eds.index_fact_partitions): building an index once is about twice as
-- fast as growing it row by row.
CREATE FUNCTION eds.ensure_fact_partitions(with_indexes boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $parts$
DECLARE
	m		date;
	part	text;
	created	integer := 0;
BEGIN
	FOR m IN
		SELECT DISTINCT date_trunc('month', s.payment_date AT TIME ZONE 'UTC')::date
		  FROM staging.stg_payments s
		 WHERE NOT s.is_deleted AND s.problem IS NULL
		 ORDER BY 1
	LOOP
		part := 'fact_payments_' || to_char(m, 'YYYY_MM');
		IF to_regclass('warehouse.' || part) IS NULL THEN
			EXECUTE format('CREATE TABLE warehouse.%I PARTITION OF warehouse.fact_payments FOR VALUES FROM (%L) TO (%L)',
						   part, m::timestamp AT TIME ZONE 'UTC',
						   (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
			created := created + 1;
		END IF;
	END LOOP;
	IF with_indexes THEN
		PERFORM eds.index_fact_partitions();
	END IF;
	RETURN created;
END
$parts$;
COMMENT ON FUNCTION eds.ensure_fact_partitions(boolean) IS
	'Creates the monthly partitions of warehouse.fact_payments that the staged payments need (with their key and indexes unless with_indexes is false)';
REVOKE ALL ON FUNCTION eds.ensure_fact_partitions(boolean) FROM PUBLIC;

-- Gives every fact partition that lacks them its primary key and indexes.
CREATE FUNCTION eds.index_fact_partitions() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $index$
DECLARE
	part	text;
	done	integer := 0;
BEGIN
	FOR part IN
		SELECT c.relname
		  FROM pg_inherits i
		  JOIN pg_class c ON c.oid = i.inhrelid
		 WHERE i.inhparent = 'warehouse.fact_payments'::regclass
		   AND NOT EXISTS (SELECT FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary)
		 ORDER BY 1
	LOOP
		EXECUTE format('ALTER TABLE warehouse.%I ADD PRIMARY KEY (payment_id)', part);
		EXECUTE format('CREATE INDEX ON warehouse.%I (customer_id)', part);
		EXECUTE format('CREATE INDEX ON warehouse.%I (loan_id)', part);
		done := done + 1;
	END LOOP;
	RETURN done;
END
$index$;
COMMENT ON FUNCTION eds.index_fact_partitions() IS
	'Adds the primary key and the customer_id and loan_id indexes to the fact_payments partitions that do not have them yet';
REVOKE ALL ON FUNCTION eds.index_fact_partitions() FROM PUBLIC;

-- Recomputes the monthly payment summary for payments in [from_time, to_time)
-- (whole UTC months); one month at a time touches one partition.
CREATE FUNCTION eds.summarize_payments(from_time timestamptz, to_time timestamptz) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	DELETE FROM eds.payments_by_month
	 WHERE month >= (from_time AT TIME ZONE 'UTC')::date AND month < (to_time AT TIME ZONE 'UTC')::date;
	INSERT INTO eds.payments_by_month
		(month, branch_code, method_sk, payment_count, total_amount, principal, interest, penalty)
	SELECT date_trunc('month', f.payment_date AT TIME ZONE 'UTC')::date, f.branch_code, f.method_sk,
		   count(*), sum(f.payment_amount), sum(f.principal_portion), sum(f.interest_portion),
		   sum(f.penalty_portion)
	  FROM warehouse.fact_payments f
	 WHERE f.payment_date >= from_time AND f.payment_date < to_time
	 GROUP BY 1, 2, 3;
END;
COMMENT ON FUNCTION eds.summarize_payments(timestamptz, timestamptz) IS
	'Recomputes eds.payments_by_month for the payments made in [from_time, to_time), whole UTC months';
REVOKE ALL ON FUNCTION eds.summarize_payments(timestamptz, timestamptz) FROM PUBLIC;

-- Recomputes the payment totals of the given customers (NULL: of everyone)
-- from fact_loans, which already holds them per loan.
CREATE FUNCTION eds.summarize_customers(customer_ids bigint[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $summarize$
BEGIN
	IF customer_ids IS NULL THEN
		TRUNCATE eds.customer_payment_totals;
	ELSIF cardinality(customer_ids) = 0 THEN
		RETURN;
	ELSE
		DELETE FROM eds.customer_payment_totals WHERE customer_id = ANY (customer_ids);
	END IF;
	-- Two statements rather than one with an OR, so a run's few customers
	-- are found through the index.
	IF customer_ids IS NULL THEN
		INSERT INTO eds.customer_payment_totals (customer_id, total_paid, payment_count, loan_count, last_payment_date)
		SELECT f.customer_id, sum(f.total_paid), sum(f.payment_count), count(*) FILTER (WHERE f.payment_count > 0),
			   max(f.last_payment_date)
		  FROM warehouse.fact_loans f
		 GROUP BY f.customer_id
		HAVING sum(f.payment_count) > 0;
	ELSE
		INSERT INTO eds.customer_payment_totals (customer_id, total_paid, payment_count, loan_count, last_payment_date)
		SELECT f.customer_id, sum(f.total_paid), sum(f.payment_count), count(*) FILTER (WHERE f.payment_count > 0),
			   max(f.last_payment_date)
		  FROM warehouse.fact_loans f
		 WHERE f.customer_id = ANY (customer_ids)
		 GROUP BY f.customer_id
		HAVING sum(f.payment_count) > 0;
	END IF;
END
$summarize$;
COMMENT ON FUNCTION eds.summarize_customers(bigint[]) IS
	'Recomputes eds.customer_payment_totals for the given customers, or for all when NULL';
REVOKE ALL ON FUNCTION eds.summarize_customers(bigint[]) FROM PUBLIC;

/*
 * The merge of one run, called by the ETL worker inside the transaction that
 * also moves the watermark.  Staging holds, for every key that changed in
 * the run's window (and every loan and customer those rows reference), the
 * row as of one source snapshot, or is_deleted.  Everything here is
 * idempotent per key, so a key seen twice (by the first load and by the
 * window after it) ends in the same state.
 */
CREATE FUNCTION eds.load_staged(p_run_id bigint, p_source_time timestamptz, p_probe_all boolean, p_full boolean,
								p_payments_read bigint)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Just-in-time compilation costs more than it saves on these statements
-- (measured: 0.66 s of a 1.9 s run at 1M payments).
SET jit = off
AS $load$
DECLARE
	c_read bigint; c_new bigint; c_changed bigint; c_type1 bigint; c_deleted bigint;
	l_read bigint; l_new bigint; l_changed bigint; l_deleted bigint;
	p_read bigint; p_new bigint; p_changed bigint; p_deleted bigint; p_rejected bigint;
	f_new bigint; f_changed bigint; f_deleted bigint;
	n bigint;
	moved_loans bigint[];
	versions_from timestamptz;
	probe_from timestamptz;
	probe_to timestamptz;
	m date;
BEGIN
	CREATE TEMP TABLE eds_changed_customers (customer_id bigint PRIMARY KEY) ON COMMIT DROP;
	CREATE TEMP TABLE eds_changed_loans (loan_id bigint PRIMARY KEY) ON COMMIT DROP;
	CREATE TEMP TABLE eds_payment_delta (loan_id bigint, payment_id bigint, sign integer, amount numeric,
										 paid_at timestamptz) ON COMMIT DROP;
	-- What the view summaries must recompute: months, and customers.
	CREATE TEMP TABLE eds_dirty_months (month date) ON COMMIT DROP;
	CREATE TEMP TABLE eds_dirty_customers (customer_id bigint) ON COMMIT DROP;

	-- The planner must know how small (or large) this run is: fresh
	-- statistics of staging make it probe indexes for a small window
	-- instead of scanning the facts.
	ANALYZE staging.stg_loan_products, staging.stg_customers, staging.stg_loans, staging.stg_payments;

	-- ---------------- dim_customer: SCD type 2 on name, city, segment
	SELECT count(*) INTO c_read FROM staging.stg_customers;

	-- Close the current version of each customer that changed, was deleted,
	-- or came back, and open the next one from the same instant.
	WITH closed AS (
		UPDATE warehouse.dim_customer d
		   SET effective_to = greatest(CASE WHEN s.is_deleted THEN p_source_time ELSE s.updated_at END,
									   d.effective_from),
			   is_current = false
		  FROM staging.stg_customers s
		 WHERE d.customer_id = s.customer_id AND d.is_current
		   AND (s.is_deleted <> d.is_deleted
				OR (NOT s.is_deleted
					AND (d.full_name, d.city, d.segment) IS DISTINCT FROM (s.full_name, s.city, s.segment)))
		RETURNING d.*
	), opened AS (
		INSERT INTO warehouse.dim_customer
			(customer_id, version_no, full_name, email, phone, city, country, segment,
			 effective_from, is_current, is_deleted)
		SELECT k.customer_id, k.version_no + 1,
			   CASE WHEN s.is_deleted THEN k.full_name ELSE s.full_name END,
			   CASE WHEN s.is_deleted THEN k.email ELSE s.email END,
			   CASE WHEN s.is_deleted THEN k.phone ELSE s.phone END,
			   CASE WHEN s.is_deleted THEN k.city ELSE s.city END,
			   CASE WHEN s.is_deleted THEN k.country ELSE s.country END,
			   CASE WHEN s.is_deleted THEN k.segment ELSE s.segment END,
			   k.effective_to, true, s.is_deleted
		  FROM closed k JOIN staging.stg_customers s USING (customer_id)
		RETURNING customer_id, is_deleted
	)
	INSERT INTO eds_changed_customers SELECT customer_id FROM opened;
	ANALYZE eds_changed_customers;
	SELECT count(*) FILTER (WHERE d.is_deleted), count(*) FILTER (WHERE NOT d.is_deleted)
	  INTO c_deleted, c_changed
	  FROM eds_changed_customers x JOIN warehouse.dim_customer d ON d.customer_id = x.customer_id AND d.is_current;

	-- Customers seen for the first time.
	INSERT INTO warehouse.dim_customer
		(customer_id, version_no, full_name, email, phone, city, country, segment, effective_from)
	SELECT s.customer_id, 1, s.full_name, s.email, s.phone, s.city, s.country, s.segment, s.created_at
	  FROM staging.stg_customers s
	 WHERE NOT s.is_deleted
	   AND NOT EXISTS (SELECT FROM warehouse.dim_customer d WHERE d.customer_id = s.customer_id);
	GET DIAGNOSTICS c_new = ROW_COUNT;

	-- Contact details are type 1: corrected in place on the current version.
	UPDATE warehouse.dim_customer d
	   SET email = s.email, phone = s.phone, country = s.country
	  FROM staging.stg_customers s
	 WHERE d.customer_id = s.customer_id AND d.is_current AND NOT s.is_deleted
	   AND (d.email, d.phone, d.country) IS DISTINCT FROM (s.email, s.phone, s.country);
	GET DIAGNOSTICS c_type1 = ROW_COUNT;

	-- ---------------- dim_loan: type 1, deleted loans kept and flagged
	SELECT count(*) INTO l_read FROM staging.stg_loans;

	-- A loan moving to another branch moves its payments between the
	-- branches of the monthly summary: every month it has payments in.
	SELECT array_agg(s.loan_id) INTO moved_loans
	  FROM staging.stg_loans s
	  JOIN warehouse.dim_loan d ON d.loan_id = s.loan_id
	 WHERE s.touched AND NOT s.is_deleted AND d.branch_code IS DISTINCT FROM s.branch_code;
	IF moved_loans IS NOT NULL THEN
		INSERT INTO eds_dirty_months
		SELECT DISTINCT date_trunc('month', f.payment_date AT TIME ZONE 'UTC')::date
		  FROM warehouse.fact_payments f WHERE f.loan_id = ANY (moved_loans);
	END IF;
	WITH up AS (
		INSERT INTO warehouse.dim_loan AS d
			(loan_id, customer_id, product_name, product_type, amount, interest_rate, tenure_months,
			 status, branch_code, loan_officer, disbursed_at, maturity_date, is_deleted)
		SELECT s.loan_id, s.customer_id, p.product_name, p.product_type, s.amount, s.interest_rate,
			   s.tenure_months, s.status, s.branch_code, s.loan_officer, s.disbursed_at, s.maturity_date, false
		  FROM staging.stg_loans s LEFT JOIN staging.stg_loan_products p USING (product_id)
		 WHERE NOT s.is_deleted
		ON CONFLICT (loan_id) DO UPDATE
		   SET customer_id = excluded.customer_id, product_name = excluded.product_name,
			   product_type = excluded.product_type, amount = excluded.amount,
			   interest_rate = excluded.interest_rate, tenure_months = excluded.tenure_months,
			   status = excluded.status, branch_code = excluded.branch_code,
			   loan_officer = excluded.loan_officer, disbursed_at = excluded.disbursed_at,
			   maturity_date = excluded.maturity_date, is_deleted = false
		 WHERE (d.customer_id, d.product_name, d.product_type, d.amount, d.interest_rate, d.tenure_months,
				d.status, d.branch_code, d.loan_officer, d.disbursed_at, d.maturity_date, d.is_deleted)
			   IS DISTINCT FROM
			   (excluded.customer_id, excluded.product_name, excluded.product_type, excluded.amount,
				excluded.interest_rate, excluded.tenure_months, excluded.status, excluded.branch_code,
				excluded.loan_officer, excluded.disbursed_at, excluded.maturity_date, false)
		RETURNING d.loan_id, (xmax = 0) AS inserted
	), changed AS (
		INSERT INTO eds_changed_loans SELECT loan_id FROM up WHERE NOT inserted RETURNING loan_id
	)
	SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) INTO l_new, l_changed FROM up;
	ANALYZE eds_changed_loans;
	UPDATE warehouse.dim_loan d SET is_deleted = true
	  FROM staging.stg_loans s
	 WHERE s.is_deleted AND d.loan_id = s.loan_id AND NOT d.is_deleted;
	GET DIAGNOSTICS l_deleted = ROW_COUNT;

	-- ---------------- fact_payments
	p_read := p_payments_read;	-- as COPY counted them: counting again is a scan
	IF p_full THEN
		-- The dimensions grew from nothing: the fact insert must join them by hash.
		ANALYZE warehouse.dim_customer, warehouse.dim_loan;
	END IF;

	-- Rows the warehouse cannot take are rejected, with the reason.
	INSERT INTO audit.etl_rejects (run_id, table_name, source_key, reason, row_data)
	SELECT p_run_id, 'payments', s.payment_id,
		   coalesce(s.problem, 'its loan is not on the source'),
		   to_jsonb(s) - 'is_deleted' - 'touched' - 'problem'
	  FROM staging.stg_payments s
	  LEFT JOIN warehouse.dim_loan l ON l.loan_id = s.loan_id AND NOT l.is_deleted
	 WHERE NOT s.is_deleted
	   AND (s.problem IS NOT NULL OR l.loan_id IS NULL);
	GET DIAGNOSTICS p_rejected = ROW_COUNT;

	PERFORM eds.ensure_fact_partitions(NOT p_full);

	-- Remove the warehouse's old version of every payment that may have one
	-- (updated, deleted, or seen before by the first load); remember it.
	WITH gone AS (
		DELETE FROM warehouse.fact_payments f
		 USING staging.stg_payments s
		 WHERE s.touched AND f.payment_id = s.payment_id
		RETURNING f.loan_id, f.payment_id, f.payment_amount, f.payment_date
	)
	INSERT INTO eds_payment_delta SELECT loan_id, payment_id, -1, payment_amount, payment_date FROM gone;
	-- After a first load, a payment only inserted in this window may be in
	-- the facts already, as this same version: so in the partition of its
	-- own date, and only the partitions of the window's dates are searched.
	IF p_probe_all THEN
		SELECT min(s.payment_date), max(s.payment_date) INTO probe_from, probe_to
		  FROM staging.stg_payments s WHERE NOT s.touched AND NOT s.is_deleted;
		WITH gone AS (
			DELETE FROM warehouse.fact_payments f
			 USING staging.stg_payments s
			 WHERE NOT s.touched AND f.payment_id = s.payment_id AND f.payment_date = s.payment_date
			   AND f.payment_date >= probe_from AND f.payment_date <= probe_to
			RETURNING f.loan_id, f.payment_id, f.payment_amount, f.payment_date
		)
		INSERT INTO eds_payment_delta SELECT loan_id, payment_id, -1, payment_amount, payment_date FROM gone;
	END IF;

	-- Insert the current version, keyed to the customer version current at
	-- the payment's time (version 1 also covers anything earlier).
	WITH ins AS (
		INSERT INTO warehouse.fact_payments
			(payment_id, payment_date, date_sk, customer_sk, loan_sk, method_sk, customer_id, loan_id,
			 payment_amount, principal_portion, interest_portion, penalty_portion,
			 customer_segment, loan_status, branch_code)
		SELECT s.payment_id, s.payment_date, to_char(s.payment_date AT TIME ZONE 'UTC', 'YYYYMMDD')::integer,
			   c.customer_sk, l.loan_sk, coalesce(m.method_sk, 0), l.customer_id, s.loan_id,
			   s.amount, s.principal_portion, s.interest_portion, s.penalty_portion,
			   c.segment, l.status, l.branch_code
		  FROM staging.stg_payments s
		  JOIN warehouse.dim_loan l ON l.loan_id = s.loan_id AND NOT l.is_deleted
		  JOIN warehouse.dim_customer c
			ON c.customer_id = l.customer_id
		   AND (c.version_no = 1 OR c.effective_from <= s.payment_date)
		   AND s.payment_date < c.effective_to
		  LEFT JOIN warehouse.dim_payment_method m ON m.method_code = s.payment_method
		 WHERE NOT s.is_deleted AND s.problem IS NULL
		RETURNING loan_id, payment_id, payment_amount, payment_date
	)
	INSERT INTO eds_payment_delta SELECT loan_id, payment_id, 1, payment_amount, payment_date FROM ins WHERE NOT p_full;
	-- A first load created its partitions bare (see ensure_fact_partitions).
	IF p_full THEN
		PERFORM eds.index_fact_partitions();
	END IF;

	IF p_full THEN
		-- First load: nothing existed, every row is new; totals come from the facts below.
		SELECT count(*) INTO p_new FROM warehouse.fact_payments;
		p_changed := 0;
		p_deleted := 0;
	ELSE
		SELECT count(*) FILTER (WHERE ins AND NOT del), count(*) FILTER (WHERE ins AND del),
			   count(*) FILTER (WHERE del AND NOT ins)
		  INTO p_new, p_changed, p_deleted
		  FROM (SELECT payment_id, bool_or(sign = 1) AS ins, bool_or(sign = -1) AS del
				  FROM eds_payment_delta GROUP BY payment_id) x;
	END IF;

	-- A new customer version takes over the facts from its start on: only
	-- payments made since the earliest new version can change, so only
	-- their partitions are searched.
	SELECT min(d.effective_from) INTO versions_from
	  FROM warehouse.dim_customer d JOIN eds_changed_customers x USING (customer_id)
	 WHERE d.is_current;
	UPDATE warehouse.fact_payments f
	   SET customer_sk = d.customer_sk, customer_segment = d.segment
	  FROM warehouse.dim_customer d
	 WHERE d.customer_id IN (SELECT customer_id FROM eds_changed_customers)
	   AND f.payment_date >= versions_from
	   AND f.customer_id = d.customer_id
	   AND (d.version_no = 1 OR d.effective_from <= f.payment_date) AND f.payment_date < d.effective_to
	   AND (f.customer_sk, f.customer_segment) IS DISTINCT FROM (d.customer_sk, d.segment);

	-- A loan moved to another customer takes its payments along, each keyed
	-- to the new customer's version current at the payment's time.
	UPDATE warehouse.fact_payments f
	   SET customer_id = c.customer_id, customer_sk = c.customer_sk, customer_segment = c.segment
	  FROM warehouse.dim_loan l
	  JOIN warehouse.dim_customer c ON c.customer_id = l.customer_id
	 WHERE l.loan_id IN (SELECT loan_id FROM eds_changed_loans)
	   AND f.loan_id = l.loan_id AND f.customer_id <> l.customer_id
	   AND (c.version_no = 1 OR c.effective_from <= f.payment_date) AND f.payment_date < c.effective_to;

	-- The loan's current status and branch are quick filters on its payments.
	UPDATE warehouse.fact_payments f
	   SET loan_status = l.status, branch_code = l.branch_code
	  FROM warehouse.dim_loan l
	 WHERE l.loan_id IN (SELECT loan_id FROM eds_changed_loans)
	   AND f.loan_id = l.loan_id
	   AND (f.loan_status, f.branch_code) IS DISTINCT FROM (l.status, l.branch_code);

	-- ---------------- fact_loans: one row per loan; payment totals by delta
	-- The customers whose totals change: each staged loan's old and new
	-- borrower, and the borrower of a loan that lost a payment (a deleted
	-- payment does not stage its loan).
	IF NOT p_full THEN
		INSERT INTO eds_dirty_customers
		SELECT f.customer_id FROM warehouse.fact_loans f JOIN staging.stg_loans s USING (loan_id)
		UNION
		SELECT s.customer_id FROM staging.stg_loans s WHERE s.customer_id IS NOT NULL
		UNION
		SELECT f.customer_id FROM warehouse.fact_loans f
		 WHERE f.loan_id IN (SELECT loan_id FROM eds_payment_delta);
		INSERT INTO eds_dirty_months
		SELECT DISTINCT date_trunc('month', paid_at AT TIME ZONE 'UTC')::date FROM eds_payment_delta;
	END IF;

	WITH up AS (
		INSERT INTO warehouse.fact_loans AS f
			(loan_id, loan_sk, customer_sk, customer_id, principal_amount, outstanding_balance,
			 loan_status, customer_segment, branch_code, disbursed_at, is_active, is_defaulted, is_repaid,
			 total_paid, payment_count, last_payment_date)
		SELECT l.loan_id, l.loan_sk, c.customer_sk, l.customer_id, l.amount, s.outstanding_balance,
			   l.status, c.segment, l.branch_code, l.disbursed_at,
			   l.status = 'active', l.status = 'defaulted', l.status = 'repaid',
			   coalesce(t.paid, 0), coalesce(t.payments, 0), t.last_paid
		  FROM staging.stg_loans s
		  JOIN warehouse.dim_loan l USING (loan_id)
		  JOIN warehouse.dim_customer c ON c.customer_id = l.customer_id AND c.is_current
		  -- A first load takes the totals from the facts it just loaded (a
		  -- later run adds its delta below).
		  LEFT JOIN (SELECT p.loan_id, sum(p.payment_amount) AS paid, count(*) AS payments,
							max(p.payment_date) AS last_paid
					   FROM warehouse.fact_payments p WHERE p_full GROUP BY p.loan_id) t
			ON t.loan_id = s.loan_id
		 WHERE NOT s.is_deleted
		ON CONFLICT (loan_id) DO UPDATE
		   SET loan_sk = excluded.loan_sk, customer_sk = excluded.customer_sk,
			   customer_id = excluded.customer_id, principal_amount = excluded.principal_amount,
			   outstanding_balance = excluded.outstanding_balance, loan_status = excluded.loan_status,
			   customer_segment = excluded.customer_segment, branch_code = excluded.branch_code,
			   disbursed_at = excluded.disbursed_at, is_active = excluded.is_active,
			   is_defaulted = excluded.is_defaulted, is_repaid = excluded.is_repaid
		 WHERE (f.loan_sk, f.customer_sk, f.customer_id, f.principal_amount, f.outstanding_balance,
				f.loan_status, f.customer_segment, f.branch_code, f.disbursed_at)
			   IS DISTINCT FROM
			   (excluded.loan_sk, excluded.customer_sk, excluded.customer_id, excluded.principal_amount,
				excluded.outstanding_balance, excluded.loan_status, excluded.customer_segment,
				excluded.branch_code, excluded.disbursed_at)
		RETURNING (xmax = 0) AS inserted
	)
	SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) INTO f_new, f_changed FROM up;

	UPDATE warehouse.fact_loans f
	   SET customer_sk = c.customer_sk, customer_segment = c.segment
	  FROM warehouse.dim_customer c
	 WHERE c.customer_id IN (SELECT customer_id FROM eds_changed_customers) AND c.is_current
	   AND f.customer_id = c.customer_id
	   AND (f.customer_sk, f.customer_segment) IS DISTINCT FROM (c.customer_sk, c.segment);

	DELETE FROM warehouse.fact_loans f
	 USING staging.stg_loans s
	 WHERE s.is_deleted AND f.loan_id = s.loan_id;
	GET DIAGNOSTICS f_deleted = ROW_COUNT;

	IF NOT p_full THEN
		-- The latest payment only moves forward, unless the latest one was
		-- removed and nothing as late came in: then it is looked up again.
		-- (A payment deleted and inserted again unchanged, as the run after a
		-- first load does, needs no lookup.)
		UPDATE warehouse.fact_loans f
		   SET total_paid = f.total_paid + d.amount, payment_count = f.payment_count + d.payments,
			   last_payment_date =
				   CASE WHEN d.last_removed >= f.last_payment_date
							 AND d.last_removed > coalesce(d.last_added, '-infinity')
						THEN (SELECT max(p.payment_date) FROM warehouse.fact_payments p
							   WHERE p.loan_id = f.loan_id)
						ELSE greatest(f.last_payment_date, d.last_added) END
		  FROM (SELECT loan_id, sum(sign * amount) AS amount, sum(sign) AS payments,
					   max(paid_at) FILTER (WHERE sign < 0) AS last_removed,
					   max(paid_at) FILTER (WHERE sign > 0) AS last_added
				  FROM eds_payment_delta GROUP BY loan_id) d
		 WHERE f.loan_id = d.loan_id;
	END IF;

	-- ---------------- the summaries behind the views
	IF p_full THEN
		PERFORM eds.summarize_payments('-infinity', 'infinity');
		PERFORM eds.summarize_customers(NULL);
	ELSE
		FOR m IN SELECT DISTINCT month FROM eds_dirty_months ORDER BY 1 LOOP
			PERFORM eds.summarize_payments(m::timestamp AT TIME ZONE 'UTC',
										   (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
		END LOOP;
		PERFORM eds.summarize_customers(ARRAY(SELECT DISTINCT customer_id FROM eds_dirty_customers));
	END IF;

	-- After a first load the tables grew from nothing: plan later runs on
	-- real sizes.  The dimensions were analyzed before the facts went in; the
	-- fact partitions got their sizes from their index builds, and
	-- autovacuum's analyze follows (a full ANALYZE here would read them all
	-- again).
	IF p_full THEN
		ANALYZE warehouse.fact_loans;
	END IF;

	RETURN jsonb_build_object(
		'customers', jsonb_build_object('read', c_read, 'inserted', c_new, 'updated', c_changed + c_type1,
										'new_versions', c_changed, 'deleted', c_deleted),
		'loans', jsonb_build_object('read', l_read, 'inserted', l_new, 'updated', l_changed, 'deleted', l_deleted),
		'payments', jsonb_build_object('read', p_read, 'inserted', p_new, 'updated', p_changed,
									   'deleted', p_deleted, 'rejected', p_rejected),
		'fact_loans', jsonb_build_object('inserted', f_new, 'updated', f_changed, 'deleted', f_deleted));
END
$load$;
COMMENT ON FUNCTION eds.load_staged(bigint, timestamptz, boolean, boolean, bigint) IS
	'Merges the staged rows of one ETL run into the star schema (called by the ETL worker)';
REVOKE ALL ON FUNCTION eds.load_staged(bigint, timestamptz, boolean, boolean, bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Scheduling with pg_cron
-- ---------------------------------------------------------------------------
CREATE FUNCTION eds_schedule_etl(schedule text DEFAULT '*/15 * * * *') RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $sched$
DECLARE
	v_job bigint;
BEGIN
	IF schedule IS NULL OR btrim(schedule) = '' THEN
		RAISE EXCEPTION 'eds_schedule_etl: the schedule must not be empty'
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass a cron expression, for example ''*/15 * * * *''.';
	END IF;
	IF to_regprocedure('cron.schedule(text,text,text)') IS NULL THEN
		RAISE EXCEPTION 'pg_cron is not installed in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, and CREATE EXTENSION pg_cron.';
	END IF;
	EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO v_job
		USING 'eds_etl', schedule,
			  format('SELECT status FROM %s.eds_run_etl()',
					 (SELECT e.extnamespace::regnamespace::text FROM pg_extension e WHERE e.extname = 'eds'));
	RETURN v_job;
END
$sched$;
COMMENT ON FUNCTION eds_schedule_etl(text) IS
	'Schedules eds_run_etl() with pg_cron as job eds_etl (default every 15 minutes); returns the job id';
REVOKE ALL ON FUNCTION eds_schedule_etl(text) FROM PUBLIC;

CREATE FUNCTION eds_unschedule_etl() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $unsched$
BEGIN
	IF to_regprocedure('cron.unschedule(name)') IS NULL THEN
		RAISE EXCEPTION 'pg_cron is not installed in this database'
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'Nothing can be scheduled without pg_cron, so there is nothing to remove.';
	END IF;
	IF NOT EXISTS (SELECT FROM cron.job WHERE jobname = 'eds_etl') THEN
		RETURN false;
	END IF;
	EXECUTE 'SELECT cron.unschedule($1)' USING 'eds_etl';
	RETURN true;
END
$unsched$;
COMMENT ON FUNCTION eds_unschedule_etl() IS 'Removes the pg_cron job eds_etl; false when there was none';
REVOKE ALL ON FUNCTION eds_unschedule_etl() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Reconciliation: the same figures computed on each side, then compared
-- ---------------------------------------------------------------------------

-- Source side: counts and sums, per month for payments, and a digest of the
-- customer attributes the warehouse tracks, in 256 buckets.
CREATE FUNCTION eds.reconcile_source_figures() RETURNS TABLE (check_name text, check_key text, value numeric)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $src$
	SELECT 'customers', 'count', count(*)::numeric FROM operational.customers
	UNION ALL
	SELECT 'loans', 'count', count(*) FROM operational.loans
	UNION ALL
	SELECT 'loans', 'outstanding', coalesce(sum(outstanding_balance), 0) FROM operational.loans
	UNION ALL
	SELECT 'loans by status', status, count(*) FROM operational.loans GROUP BY status
	UNION ALL
	SELECT 'payments', 'count', count(*) FROM operational.payments
	UNION ALL
	SELECT 'payments', 'amount', coalesce(sum(amount), 0) FROM operational.payments
	UNION ALL
	SELECT 'payments per month', to_char(payment_date AT TIME ZONE 'UTC', 'YYYY-MM') || ' count', count(*)
	  FROM operational.payments GROUP BY 2
	UNION ALL
	SELECT 'payments per month', to_char(payment_date AT TIME ZONE 'UTC', 'YYYY-MM') || ' amount', sum(amount)
	  FROM operational.payments GROUP BY 2
	UNION ALL
	SELECT 'customer attributes', (customer_id % 256)::text,
		   ('x' || left(md5(string_agg(concat_ws('|', customer_id, full_name, city, segment, email), ',' ORDER BY customer_id)), 12))::bit(48)::bigint
	  FROM operational.customers GROUP BY customer_id % 256
	UNION ALL
	SELECT 'fact_loans totals', 'loans whose total_paid or payment_count disagree with fact_payments', 0
	UNION ALL
	SELECT 'fact_payments customers', 'payments keyed to another customer than their loan''s', 0
	UNION ALL
	SELECT 'view summaries', 'months, branches and methods whose summary disagrees with fact_payments', 0
	UNION ALL
	SELECT 'view summaries', 'customers whose totals disagree with fact_loans', 0
$src$;
COMMENT ON FUNCTION eds.reconcile_source_figures() IS 'Figures eds_reconcile() compares, computed on the source';
GRANT USAGE ON SCHEMA eds TO etl_reader;
REVOKE ALL ON FUNCTION eds.reconcile_source_figures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.reconcile_source_figures() TO etl_reader;

-- Warehouse side: the same figures from the star schema.  Payments that
-- were rejected are not in the facts; they show up as differences.
CREATE FUNCTION eds.reconcile_warehouse_figures() RETURNS TABLE (check_name text, check_key text, value numeric)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $wh$
	SELECT 'customers', 'count', count(*)::numeric FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted
	UNION ALL
	SELECT 'loans', 'count', count(*) FROM warehouse.fact_loans
	UNION ALL
	SELECT 'loans', 'outstanding', coalesce(sum(outstanding_balance), 0) FROM warehouse.fact_loans
	UNION ALL
	SELECT 'loans by status', loan_status, count(*) FROM warehouse.fact_loans GROUP BY loan_status
	UNION ALL
	SELECT 'payments', 'count', count(*) FROM warehouse.fact_payments
	UNION ALL
	SELECT 'payments', 'amount', coalesce(sum(payment_amount), 0) FROM warehouse.fact_payments
	UNION ALL
	SELECT 'payments per month', to_char(payment_date AT TIME ZONE 'UTC', 'YYYY-MM') || ' count', count(*)
	  FROM warehouse.fact_payments GROUP BY 2
	UNION ALL
	SELECT 'payments per month', to_char(payment_date AT TIME ZONE 'UTC', 'YYYY-MM') || ' amount', sum(payment_amount)
	  FROM warehouse.fact_payments GROUP BY 2
	UNION ALL
	SELECT 'customer attributes', (customer_id % 256)::text,
		   ('x' || left(md5(string_agg(concat_ws('|', customer_id, full_name, city, segment, email), ',' ORDER BY customer_id)), 12))::bit(48)::bigint
	  FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted GROUP BY customer_id % 256
	UNION ALL
	SELECT 'fact_payments customers', 'payments keyed to another customer than their loan''s', count(*)
	  FROM warehouse.fact_payments f JOIN warehouse.dim_loan l USING (loan_id)
	 WHERE f.customer_id <> l.customer_id
	UNION ALL
	-- fact_loans keeps its payment totals by delta: check them against the facts
	SELECT 'fact_loans totals', 'loans whose total_paid or payment_count disagree with fact_payments', count(*)
	  FROM warehouse.fact_loans f
	  LEFT JOIN (SELECT loan_id, sum(payment_amount) AS paid, count(*) AS n, max(payment_date) AS last_paid
				   FROM warehouse.fact_payments GROUP BY loan_id) p USING (loan_id)
	 WHERE f.total_paid <> coalesce(p.paid, 0) OR f.payment_count <> coalesce(p.n, 0)
		OR f.last_payment_date IS DISTINCT FROM p.last_paid
	UNION ALL
	-- The views read summaries the ETL keeps: check them against the facts
	SELECT 'view summaries', 'months, branches and methods whose summary disagrees with fact_payments', count(*)
	  FROM (SELECT month, branch_code, method_sk, payment_count, total_amount, principal, interest, penalty
			  FROM eds.payments_by_month) s
	  FULL JOIN (SELECT date_trunc('month', payment_date AT TIME ZONE 'UTC')::date AS month, branch_code,
						method_sk, count(*) AS payment_count, sum(payment_amount) AS total_amount,
						sum(principal_portion) AS principal, sum(interest_portion) AS interest,
						sum(penalty_portion) AS penalty
				   FROM warehouse.fact_payments GROUP BY 1, 2, 3) f
		ON f.month = s.month AND f.branch_code IS NOT DISTINCT FROM s.branch_code AND f.method_sk = s.method_sk
	 WHERE (s.payment_count, s.total_amount, s.principal, s.interest, s.penalty)
		   IS DISTINCT FROM (f.payment_count, f.total_amount, f.principal, f.interest, f.penalty)
	UNION ALL
	SELECT 'view summaries', 'customers whose totals disagree with fact_loans', count(*)
	  FROM eds.customer_payment_totals t
	  FULL JOIN (SELECT customer_id, sum(total_paid) AS total_paid, sum(payment_count) AS payment_count,
						count(*) FILTER (WHERE payment_count > 0) AS loan_count,
						max(last_payment_date) AS last_payment_date
				   FROM warehouse.fact_loans GROUP BY customer_id HAVING sum(payment_count) > 0) f
		USING (customer_id)
	 WHERE (t.total_paid, t.payment_count, t.loan_count, t.last_payment_date)
		   IS DISTINCT FROM (f.total_paid, f.payment_count, f.loan_count, f.last_payment_date)
$wh$;
COMMENT ON FUNCTION eds.reconcile_warehouse_figures() IS 'Figures eds_reconcile() compares, computed on the warehouse';
REVOKE ALL ON FUNCTION eds.reconcile_warehouse_figures() FROM PUBLIC;

CREATE FUNCTION eds_reconcile(
	OUT check_name text, OUT check_key text, OUT source_value numeric, OUT warehouse_value numeric)
	RETURNS SETOF record
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_reconcile';
COMMENT ON FUNCTION eds_reconcile() IS
	'Compares source and warehouse (counts, sums, per-month payments, customer attributes, fact_loans totals); returns only the differences, so no rows means clean';
REVOKE ALL ON FUNCTION eds_reconcile() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Source-side bookkeeping, called by the ETL over its connection
-- ---------------------------------------------------------------------------

-- Records how far a warehouse has loaded and purges the change log below
-- what every known warehouse has loaded.  SECURITY DEFINER so the ETL
-- login needs no write privilege on the source.
CREATE FUNCTION eds.etl_acknowledge(p_consumer text, p_watermark xid8, p_run_id bigint, p_rows bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $ack$
DECLARE
	v_min		xid8;
	v_purged	bigint;
BEGIN
	IF p_consumer IS NULL OR p_watermark IS NULL THEN
		RAISE EXCEPTION 'eds.etl_acknowledge: consumer and watermark must not be null'
			USING ERRCODE = 'null_value_not_allowed',
				  HINT = 'This function is called by eds_run_etl(); there is no need to call it by hand.';
	END IF;
	INSERT INTO eds.etl_consumers AS c (consumer, watermark, last_extract_at, last_run_id, rows_read, extracted_by)
	VALUES (p_consumer, p_watermark, now(), p_run_id, p_rows, session_user)
	ON CONFLICT (consumer) DO UPDATE
	   SET watermark = greatest(c.watermark, excluded.watermark),
		   last_extract_at = excluded.last_extract_at, last_run_id = excluded.last_run_id,
		   rows_read = excluded.rows_read, extracted_by = excluded.extracted_by;

	SELECT min(watermark) INTO v_min FROM eds.etl_consumers;
	DELETE FROM eds.change_log WHERE txid < v_min;
	GET DIAGNOSTICS v_purged = ROW_COUNT;
	INSERT INTO eds.change_log_horizon AS h (id, purged_upto) VALUES (1, v_min)
	ON CONFLICT (id) DO UPDATE SET purged_upto = greatest(h.purged_upto, excluded.purged_upto);
	RETURN v_purged;
END
$ack$;
COMMENT ON FUNCTION eds.etl_acknowledge(text, xid8, bigint, bigint) IS
	'Called by the ETL after its warehouse commit: records the consumer''s watermark and purges the change log below every consumer''s watermark';
REVOKE ALL ON FUNCTION eds.etl_acknowledge(text, xid8, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.etl_acknowledge(text, xid8, bigint, bigint) TO etl_reader;
GRANT SELECT ON eds.change_log, eds.change_log_horizon TO etl_reader;

-- ===========================================================================
-- Replication lag history, heartbeat and health (primary side)
-- ===========================================================================

-- The heartbeat: the eds worker writes one row per interval on the primary.
-- A standby that has replayed up to a heartbeat's LSN has everything up to
-- its time, so the primary measures end-to-end lag with its own clock only.
CREATE TABLE eds.heartbeat (
	beat_at		timestamptz PRIMARY KEY,
	beat_lsn	pg_lsn NOT NULL
);
COMMENT ON TABLE eds.heartbeat IS 'Heartbeats written on the primary every eds.lag_sample_interval; replicated like any row';

CREATE TABLE eds.replication_lag_history (
	sample_id			bigserial PRIMARY KEY,
	sampled_at			timestamptz NOT NULL,
	replica				text NOT NULL,
	status				text NOT NULL CHECK (status IN ('streaming', 'catchup', 'startup', 'backup', 'stopping', 'missing')),
	client_addr			inet,
	sync_state			text,
	slot_name			text,
	sent_lsn			pg_lsn,
	write_lsn			pg_lsn,
	flush_lsn			pg_lsn,
	replay_lsn			pg_lsn,
	sent_lag_bytes		bigint,
	write_lag_bytes		bigint,
	flush_lag_bytes		bigint,
	replay_lag_bytes	bigint,
	write_lag			interval,
	flush_lag			interval,
	replay_lag			interval,
	heartbeat_lag		interval,
	reply_time			timestamptz,
	slot_active			boolean,
	slot_retained_bytes	bigint,
	slot_wal_status		text
);
COMMENT ON TABLE eds.replication_lag_history IS 'One row per replica per sample of the eds worker (or eds_sample_replication_lag())';
CREATE INDEX replication_lag_history_time_idx ON eds.replication_lag_history (sampled_at);
SELECT pg_catalog.pg_extension_config_dump('eds.replication_lag_history', '');
SELECT pg_catalog.pg_extension_config_dump('eds.replication_lag_history_sample_id_seq', '');

-- One sample: a heartbeat, then one row per connected or expected replica.
-- Expected replicas are the physical slots plus eds.expected_replicas.
CREATE FUNCTION eds_sample_replication_lag() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $sample$
DECLARE
	v_rows		integer;
	v_expected	text[];
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'eds_sample_replication_lag: this server is a standby'
			USING ERRCODE = 'read_only_sql_transaction',
				  HINT = 'Sample on the primary; on a standby, eds_health() reports the replayed heartbeat''s age.';
	END IF;
	v_expected := coalesce(string_to_array(nullif(replace(current_setting('eds.expected_replicas', true), ' ', ''), ''), ','),
						   '{}');

	INSERT INTO eds.heartbeat (beat_at, beat_lsn) VALUES (clock_timestamp(), pg_current_wal_insert_lsn())
	ON CONFLICT (beat_at) DO NOTHING;

	WITH cur AS (SELECT pg_current_wal_lsn() AS lsn),
	walsenders AS (
		SELECT r.*, s.slot_name AS slot
		  FROM pg_stat_replication r
		  LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
		 WHERE r.application_name NOT IN ('pg_basebackup', 'pg_rewind')
	),
	expected AS (
		SELECT slot_name AS replica, slot_name FROM pg_replication_slots WHERE slot_type = 'physical'
		UNION
		SELECT e, NULL FROM unnest(v_expected) AS e
	),
	-- Connected replicas, by application_name; then expected ones that are
	-- not connected, named as they were when last seen.
	joined AS (
		SELECT w.application_name AS replica, w.state AS status, w.client_addr, w.sync_state,
			   w.slot AS slot_name, w.sent_lsn, w.write_lsn, w.flush_lsn, w.replay_lsn,
			   w.write_lag, w.flush_lag, w.replay_lag, w.reply_time
		  FROM walsenders w
		UNION ALL
		SELECT coalesce((SELECT h.replica FROM eds.replication_lag_history h
						  WHERE h.slot_name = x.slot_name AND h.status <> 'missing'
						  ORDER BY h.sample_id DESC LIMIT 1), x.replica),
			   'missing', NULL, NULL, x.slot_name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
		  FROM expected x
		 WHERE NOT EXISTS (SELECT FROM walsenders w WHERE w.application_name = x.replica OR w.slot = x.slot_name)
	)
	INSERT INTO eds.replication_lag_history
		(sampled_at, replica, status, client_addr, sync_state, slot_name,
		 sent_lsn, write_lsn, flush_lsn, replay_lsn,
		 sent_lag_bytes, write_lag_bytes, flush_lag_bytes, replay_lag_bytes,
		 write_lag, flush_lag, replay_lag, heartbeat_lag, reply_time,
		 slot_active, slot_retained_bytes, slot_wal_status)
	SELECT now(), j.replica, j.status, j.client_addr, j.sync_state, j.slot_name,
		   j.sent_lsn, j.write_lsn, j.flush_lsn, j.replay_lsn,
		   pg_wal_lsn_diff(cur.lsn, j.sent_lsn)::bigint, pg_wal_lsn_diff(cur.lsn, j.write_lsn)::bigint,
		   pg_wal_lsn_diff(cur.lsn, j.flush_lsn)::bigint, pg_wal_lsn_diff(cur.lsn, j.replay_lsn)::bigint,
		   j.write_lag, j.flush_lag, j.replay_lag,
		   -- Time since the newest heartbeat this replica has replayed: the
		   -- primary's clock only, so no clock skew; NULL when none replayed.
		   clock_timestamp() - (SELECT max(h.beat_at) FROM eds.heartbeat h WHERE h.beat_lsn <= j.replay_lsn),
		   j.reply_time,
		   s.active, pg_wal_lsn_diff(cur.lsn, s.restart_lsn)::bigint, s.wal_status
	  FROM joined j CROSS JOIN cur
	  LEFT JOIN pg_replication_slots s ON s.slot_name = j.slot_name;
	GET DIAGNOSTICS v_rows = ROW_COUNT;
	RETURN v_rows;
END
$sample$;
COMMENT ON FUNCTION eds_sample_replication_lag() IS
	'Writes a heartbeat and records one lag sample per replica (the eds worker calls it every eds.lag_sample_interval); returns the number of replicas recorded';
REVOKE ALL ON FUNCTION eds_sample_replication_lag() FROM PUBLIC;

-- Pruning: whole expired rows only, by the time index, at most once an hour.
CREATE FUNCTION eds.prune_lag_history() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $prune$
DECLARE
	v_keep	interval := make_interval(days => coalesce(nullif(current_setting('eds.lag_retention', true), ''), '7')::integer);
	v_n		bigint;
BEGIN
	DELETE FROM eds.replication_lag_history WHERE sampled_at < now() - v_keep;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	-- Heartbeats are needed only as far back as the slowest replica.
	DELETE FROM eds.heartbeat WHERE beat_at < now() - greatest(v_keep, interval '1 day');
	RETURN v_n;
END
$prune$;
COMMENT ON FUNCTION eds.prune_lag_history() IS 'Deletes lag samples older than eds.lag_retention days (called by the eds worker hourly)';
REVOKE ALL ON FUNCTION eds.prune_lag_history() FROM PUBLIC;

CREATE VIEW eds.vw_replication_lag_current AS
SELECT DISTINCT ON (replica)
	   replica, sampled_at, status, sync_state, client_addr, slot_name,
	   replay_lag_bytes, heartbeat_lag, replay_lag, reply_time, slot_active, slot_retained_bytes, slot_wal_status
  FROM eds.replication_lag_history
 WHERE sampled_at > now() - interval '1 day'
 ORDER BY replica, sampled_at DESC;
COMMENT ON VIEW eds.vw_replication_lag_current IS 'The latest sample of each replica';

CREATE VIEW eds.vw_replication_lag_per_minute AS
SELECT date_trunc('minute', sampled_at) AS minute, replica,
	   max(replay_lag_bytes) AS max_replay_lag_bytes, avg(replay_lag_bytes)::bigint AS avg_replay_lag_bytes,
	   max(heartbeat_lag) AS max_heartbeat_lag, avg(heartbeat_lag) AS avg_heartbeat_lag,
	   count(*) FILTER (WHERE status = 'missing') AS missing_samples
  FROM eds.replication_lag_history
 GROUP BY 1, 2;
COMMENT ON VIEW eds.vw_replication_lag_per_minute IS 'Per-minute maximum and average lag of each replica';
GRANT SELECT ON eds.heartbeat, eds.replication_lag_history, eds.vw_replication_lag_current,
	eds.vw_replication_lag_per_minute TO etl_reader;

-- ---------------------------------------------------------------------------
-- eds_health(): one row per check, with what to do about it
-- ---------------------------------------------------------------------------
CREATE FUNCTION eds.setting_number(name text, fallback numeric) RETURNS numeric
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(nullif(current_setting(name, true), '')::numeric, fallback) $$;
COMMENT ON FUNCTION eds.setting_number(text, numeric) IS 'An eds.* setting as a number, or the default when eds is not loaded';

CREATE FUNCTION eds_health(
	OUT check_name text, OUT status text, OUT value text, OUT message text)
RETURNS SETOF record
LANGUAGE plpgsql
-- Definer: a monitoring login sees replication details, the archive status
-- directory and pg_cron's jobs, which its own rights would hide.  It takes
-- no input, and its search_path is pinned.
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $health$
DECLARE
	v_interval	numeric := eds.setting_number('eds.lag_sample_interval', 10);
	v_warn_b	numeric := eds.setting_number('eds.lag_warn_bytes', 16777216);
	v_crit_b	numeric := eds.setting_number('eds.lag_critical_bytes', 1073741824);
	v_warn_s	numeric := eds.setting_number('eds.lag_warn_seconds', 60);
	v_crit_s	numeric := eds.setting_number('eds.lag_critical_seconds', 300);
	v_etl_age	numeric := eds.setting_number('eds.etl_max_age', 30);
	r			record;
	v_n			bigint;
	v_m			bigint;
	v_n2		integer;
	v_ts		timestamptz;
BEGIN
	-- Role of this server.
	check_name := 'role';
	IF pg_is_in_recovery() THEN
		status := 'ok'; value := 'standby';
		message := 'This server is a streaming standby.';
		RETURN NEXT;

		-- On a standby: how old is the newest heartbeat replayed here?  This
		-- compares the primary's clock (the heartbeat) with ours: it assumes
		-- the clocks agree (NTP) and is only as exact as they are.
		SELECT max(beat_at) INTO v_ts FROM eds.heartbeat;
		check_name := 'replayed heartbeat';
		value := coalesce(round(extract(epoch FROM now() - v_ts), 1)::text || ' s', 'none');
		IF v_ts IS NULL THEN
			status := 'unknown';
			message := 'No heartbeat replayed yet: is the eds worker running on the primary?';
		ELSIF now() - v_ts > make_interval(secs => v_crit_s) THEN
			status := 'critical';
			message := format('Replay is %s s behind the primary''s heartbeat; check pg_stat_wal_receiver and whether replay is paused (pg_is_wal_replay_paused()).', round(extract(epoch FROM now() - v_ts)));
		ELSIF now() - v_ts > make_interval(secs => v_warn_s) THEN
			status := 'warn';
			message := format('Replay is %s s behind the primary''s heartbeat.', round(extract(epoch FROM now() - v_ts)));
		ELSE
			status := 'ok';
			message := 'The primary''s heartbeat is replayed here in time (assumes synchronized clocks).';
		END IF;
		RETURN NEXT;
		RETURN;
	END IF;
	status := 'ok'; value := 'primary'; message := 'This server is a primary.';
	RETURN NEXT;

	-- Freshness of the lag samples.
	SELECT max(sampled_at) INTO v_ts FROM eds.replication_lag_history;
	check_name := 'lag sampling';
	value := coalesce(round(extract(epoch FROM now() - v_ts), 1)::text || ' s ago', 'never');
	IF NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_type = 'physical')
	   AND NOT EXISTS (SELECT FROM pg_stat_replication)
	   AND coalesce(current_setting('eds.expected_replicas', true), '') = '' THEN
		status := 'ok'; message := 'No replicas are configured or expected.';
	ELSIF v_ts IS NULL OR now() - v_ts > make_interval(secs => 3 * v_interval) THEN
		status := 'unknown';
		message := 'No recent lag sample: check that eds is in shared_preload_libraries and eds.worker_database names this database, or run eds_sample_replication_lag().';
	ELSE
		status := 'ok'; message := 'The eds worker is sampling replication lag.';
	END IF;
	RETURN NEXT;

	-- Each replica, from its latest sample.
	-- Only a fresh sample describes the replicas (after a promotion the
	-- old primary's last samples are replicated history, not the present).
	FOR r IN SELECT * FROM eds.vw_replication_lag_current
			  WHERE sampled_at >= coalesce(v_ts, now()) - make_interval(secs => v_interval)
				AND v_ts > now() - make_interval(secs => 3 * v_interval)
			  ORDER BY replica
	LOOP
		check_name := 'replica ' || r.replica;
		value := format('%s, replay %s bytes behind, heartbeat %s', r.status,
						coalesce(r.replay_lag_bytes::text, '?'),
						coalesce(round(extract(epoch FROM r.heartbeat_lag), 1)::text || ' s', 'none'));
		IF r.status = 'missing' THEN
			status := 'critical';
			message := format('Replica %s is expected (slot or eds.expected_replicas) but not connected; its slot %s WAL. Start it, or drop its slot if it is gone for good.',
							  r.replica, CASE WHEN r.slot_retained_bytes IS NULL THEN 'holds no'
											  ELSE 'holds ' || pg_size_pretty(r.slot_retained_bytes) || ' of' END);
		ELSIF r.replay_lag_bytes >= v_crit_b OR r.heartbeat_lag >= make_interval(secs => v_crit_s) THEN
			status := 'critical';
			message := format('Replica %s is far behind: %s of WAL, heartbeat %s s old. Check its log, disk and network, and pg_is_wal_replay_paused() on it.',
							  r.replica, pg_size_pretty(r.replay_lag_bytes), round(extract(epoch FROM r.heartbeat_lag)));
		ELSIF r.replay_lag_bytes >= v_warn_b OR r.heartbeat_lag >= make_interval(secs => v_warn_s) THEN
			status := 'warn';
			message := format('Replica %s is behind: %s of WAL, heartbeat %s s old.', r.replica,
							  pg_size_pretty(r.replay_lag_bytes), round(extract(epoch FROM r.heartbeat_lag)));
		ELSIF r.status <> 'streaming' THEN
			status := 'warn';
			message := format('Replica %s is connected but %s, not streaming yet.', r.replica, r.status);
		ELSE
			status := 'ok';
			message := CASE WHEN r.replay_lag_bytes = 0 THEN format('Replica %s is streaming and caught up.', r.replica)
							ELSE format('Replica %s is streaming, within the lag limits.', r.replica) END;
		END IF;
		RETURN NEXT;
	END LOOP;

	-- Slots that hold WAL for nobody, or that lost it.
	FOR r IN SELECT slot_name, active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained
			   FROM pg_replication_slots ORDER BY slot_name
	LOOP
		check_name := 'slot ' || r.slot_name;
		value := format('%s, %s retained, wal_status %s', CASE WHEN r.active THEN 'active' ELSE 'inactive' END,
						coalesce(pg_size_pretty(r.retained), 'nothing'), coalesce(r.wal_status, 'unknown'));
		IF r.wal_status IN ('lost', 'unreserved') THEN
			status := 'critical';
			message := format('Slot %s has %s its WAL: its replica must be rebuilt (pg_basebackup).', r.slot_name,
							  CASE r.wal_status WHEN 'lost' THEN 'lost' ELSE 'nearly lost' END);
		ELSIF NOT r.active AND r.retained >= v_crit_b THEN
			status := 'critical';
			message := format('Inactive slot %s retains %s of WAL, which fills the primary''s disk. Reconnect its replica or drop the slot.',
							  r.slot_name, pg_size_pretty(r.retained));
		ELSIF NOT r.active THEN
			status := 'warn';
			message := format('Slot %s is inactive and retains %s WAL.', r.slot_name, coalesce(pg_size_pretty(r.retained) || ' of', 'no'));
		ELSE
			status := 'ok'; message := format('Slot %s is in use.', r.slot_name);
		END IF;
		RETURN NEXT;
	END LOOP;

	-- WAL archiving, judged against WAL actually waiting, so idle is not an alarm.
	check_name := 'wal archiving';
	IF current_setting('archive_mode') = 'off' THEN
		status := 'warn'; value := 'off';
		message := 'archive_mode is off: point-in-time recovery is not possible.';
	ELSE
		SELECT count(*) INTO v_n FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready';
		SELECT a.failed_count, CASE WHEN a.last_failed_time > coalesce(a.last_archived_time, '-infinity') THEN 1 ELSE 0 END
		  INTO v_m, v_n2 FROM pg_stat_archiver a;
		value := format('%s segment(s) waiting, %s failure(s) in total', v_n, v_m);
		IF v_n2 = 1 THEN
			status := 'critical';
			message := 'The last archive attempt failed: check archive_command and the archive''s disk (see the server log).';
		ELSIF v_n > 10 THEN
			status := 'warn';
			message := format('%s WAL segments wait to be archived: archiving is falling behind.', v_n);
		ELSE
			status := 'ok';
			message := 'WAL archiving keeps up (an idle server with nothing to archive is fine).';
		END IF;
	END IF;
	RETURN NEXT;

	-- The ETL, where this database is a warehouse.
	IF EXISTS (SELECT FROM pg_foreign_server WHERE srvname = 'eds_source') OR EXISTS (SELECT FROM audit.etl_runs) THEN
		SELECT * INTO r FROM audit.etl_runs er WHERE er.status IN ('success', 'failed') ORDER BY er.run_id DESC LIMIT 1;
		check_name := 'etl';
		IF r IS NULL THEN
			status := 'warn'; value := 'no run yet';
			message := 'The ETL source is declared but no run has finished: run SELECT eds_run_etl().';
		ELSE
			value := format('run %s %s, %s ago', r.run_id, r.status, date_trunc('second', now() - r.run_started_at));
			IF r.status = 'failed' THEN
				status := 'critical';
				message := 'The last ETL run failed: ' || coalesce(r.error_message, '?') || ' (see audit.etl_runs).';
			ELSIF now() - r.run_started_at > make_interval(mins => v_etl_age::integer) THEN
				status := 'warn';
				message := format('The last successful run is older than eds.etl_max_age (%s min): is the schedule running?', v_etl_age);
			ELSE
				status := 'ok'; message := 'The last ETL run succeeded recently.';
			END IF;
		END IF;
		RETURN NEXT;

		check_name := 'etl schedule';
		IF to_regclass('cron.job') IS NULL THEN
			status := 'warn'; value := 'no pg_cron';
			message := 'pg_cron is not installed here: nothing runs the ETL on a schedule.';
		ELSIF NOT EXISTS (SELECT FROM cron.job cj WHERE cj.jobname = 'eds_etl') THEN
			status := 'warn'; value := 'not scheduled';
			message := 'No pg_cron job runs the ETL: SELECT eds_schedule_etl().';
		ELSE
			SELECT d.status INTO value FROM cron.job_run_details d JOIN cron.job j USING (jobid)
			 WHERE j.jobname = 'eds_etl' ORDER BY d.runid DESC LIMIT 1;
			IF value = 'failed' THEN
				status := 'warn';
				message := 'The last scheduled ETL run failed: see cron.job_run_details and audit.etl_runs.';
			ELSE
				status := 'ok'; value := coalesce(value, 'scheduled');
				message := 'pg_cron runs the ETL on its schedule.';
			END IF;
		END IF;
		RETURN NEXT;
	END IF;
END
$health$;
COMMENT ON FUNCTION eds_health() IS
	'Health checks with status ok / warn / critical / unknown and what to do: role, lag sampling, each replica, slots, WAL archiving, the ETL and its schedule';
REVOKE ALL ON FUNCTION eds_health() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds_health() TO pg_monitor;
GRANT USAGE ON SCHEMA eds, audit TO pg_monitor;
GRANT SELECT ON eds.heartbeat, eds.replication_lag_history, eds.vw_replication_lag_current,
	eds.vw_replication_lag_per_minute, audit.etl_runs TO pg_monitor;
GRANT EXECUTE ON FUNCTION eds.setting_number(text, numeric) TO pg_monitor;

-- The same figures for a Prometheus scraper.
CREATE FUNCTION eds_metrics() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	SELECT string_agg(line, E'\n' ORDER BY ord) || E'\n' FROM (
		SELECT 1 AS ord, '# HELP eds_health_status eds_health() check: 0 ok, 1 warn, 2 critical, 3 unknown' AS line
		UNION ALL SELECT 2, '# TYPE eds_health_status gauge'
		UNION ALL
		SELECT 3, format('eds_health_status{check="%s"} %s', replace(h.check_name, '"', ''''),
						 CASE h.status WHEN 'ok' THEN 0 WHEN 'warn' THEN 1 WHEN 'critical' THEN 2 ELSE 3 END)
		  FROM eds_health() h
		UNION ALL SELECT 4, '# HELP eds_replica_replay_lag_bytes WAL bytes the replica has not replayed'
		UNION ALL SELECT 5, '# TYPE eds_replica_replay_lag_bytes gauge'
		UNION ALL
		SELECT 6, format('eds_replica_replay_lag_bytes{replica="%s"} %s', c.replica, c.replay_lag_bytes)
		  FROM eds.vw_replication_lag_current c WHERE c.replay_lag_bytes IS NOT NULL
		UNION ALL SELECT 7, '# HELP eds_replica_heartbeat_lag_seconds Age of the newest heartbeat the replica has replayed'
		UNION ALL SELECT 8, '# TYPE eds_replica_heartbeat_lag_seconds gauge'
		UNION ALL
		SELECT 9, format('eds_replica_heartbeat_lag_seconds{replica="%s"} %s', c.replica,
						 round(extract(epoch FROM c.heartbeat_lag), 3))
		  FROM eds.vw_replication_lag_current c WHERE c.heartbeat_lag IS NOT NULL
		UNION ALL SELECT 10, '# HELP eds_replica_up 1 when the replica is connected'
		UNION ALL SELECT 11, '# TYPE eds_replica_up gauge'
		UNION ALL
		SELECT 12, format('eds_replica_up{replica="%s"} %s', c.replica, CASE WHEN c.status = 'missing' THEN 0 ELSE 1 END)
		  FROM eds.vw_replication_lag_current c
	) m;
END;
COMMENT ON FUNCTION eds_metrics() IS 'eds_health() and per-replica lag in Prometheus text format';
REVOKE ALL ON FUNCTION eds_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds_metrics() TO pg_monitor;

-- ---------------------------------------------------------------------------
-- Replication lag in the warehouse, for Metabase (copied by each ETL run)
-- ---------------------------------------------------------------------------
CREATE UNLOGGED TABLE staging.stg_lag_history (LIKE eds.replication_lag_history);
COMMENT ON TABLE staging.stg_lag_history IS 'Lag samples extracted by the running ETL';

CREATE TABLE warehouse.replication_lag_history (LIKE eds.replication_lag_history, PRIMARY KEY (sample_id));
CREATE INDEX replication_lag_history_time_idx ON warehouse.replication_lag_history (sampled_at);
COMMENT ON TABLE warehouse.replication_lag_history IS 'Replication lag samples of the source''s replicas, one row per replica per sample, copied from the primary by the ETL';
COMMENT ON COLUMN warehouse.replication_lag_history.replica IS 'Replica name (application_name; for a missing replica, its last known name or its slot)';
COMMENT ON COLUMN warehouse.replication_lag_history.status IS 'streaming, catchup, startup, backup, stopping, or missing (expected but not connected)';
COMMENT ON COLUMN warehouse.replication_lag_history.replay_lag_bytes IS 'WAL bytes written on the primary that the replica has not replayed yet';
COMMENT ON COLUMN warehouse.replication_lag_history.heartbeat_lag IS 'Age of the newest primary heartbeat the replica has replayed (end-to-end lag, measured with the primary''s clock only)';
COMMENT ON COLUMN warehouse.replication_lag_history.replay_lag IS 'PostgreSQL''s replay_lag; NULL when the replica is idle and caught up';
COMMENT ON COLUMN warehouse.replication_lag_history.slot_retained_bytes IS 'WAL bytes the replica''s slot keeps on the primary';
COMMENT ON COLUMN warehouse.replication_lag_history.sample_id IS 'Sample number (from the primary''s eds.replication_lag_history)';
COMMENT ON COLUMN warehouse.replication_lag_history.sampled_at IS 'When the eds worker took the sample on the primary';
COMMENT ON COLUMN warehouse.replication_lag_history.client_addr IS 'Network address the replica connects from';
COMMENT ON COLUMN warehouse.replication_lag_history.sync_state IS 'async, sync, potential or quorum';
COMMENT ON COLUMN warehouse.replication_lag_history.slot_name IS 'Replication slot the replica streams from';
COMMENT ON COLUMN warehouse.replication_lag_history.sent_lsn IS 'Last WAL position sent to the replica';
COMMENT ON COLUMN warehouse.replication_lag_history.write_lsn IS 'Last WAL position the replica wrote';
COMMENT ON COLUMN warehouse.replication_lag_history.flush_lsn IS 'Last WAL position the replica flushed to disk';
COMMENT ON COLUMN warehouse.replication_lag_history.replay_lsn IS 'Last WAL position the replica replayed (its data is this current)';
COMMENT ON COLUMN warehouse.replication_lag_history.sent_lag_bytes IS 'WAL bytes not yet sent to the replica';
COMMENT ON COLUMN warehouse.replication_lag_history.write_lag_bytes IS 'WAL bytes the replica has not written yet';
COMMENT ON COLUMN warehouse.replication_lag_history.flush_lag_bytes IS 'WAL bytes the replica has not flushed yet';
COMMENT ON COLUMN warehouse.replication_lag_history.write_lag IS 'PostgreSQL''s write_lag; NULL when idle and caught up';
COMMENT ON COLUMN warehouse.replication_lag_history.flush_lag IS 'PostgreSQL''s flush_lag; NULL when idle and caught up';
COMMENT ON COLUMN warehouse.replication_lag_history.reply_time IS 'When the replica last reported its position';
COMMENT ON COLUMN warehouse.replication_lag_history.slot_active IS 'Whether the replica''s slot is in use';
COMMENT ON COLUMN warehouse.replication_lag_history.slot_wal_status IS 'reserved, extended, unreserved or lost (unreserved or lost: the replica must be rebuilt)';
SELECT pg_catalog.pg_extension_config_dump('warehouse.replication_lag_history', '');

CREATE VIEW warehouse.vw_replication_lag_current AS
SELECT DISTINCT ON (replica)
	   replica, sampled_at, status, replay_lag_bytes, heartbeat_lag, replay_lag, slot_retained_bytes
  FROM warehouse.replication_lag_history
 ORDER BY replica, sampled_at DESC;
COMMENT ON VIEW warehouse.vw_replication_lag_current IS 'The latest known lag of each replica (as of the last ETL run)';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.replica IS 'Replica name';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.sampled_at IS 'When the sample was taken on the primary';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.status IS 'streaming, catchup, or missing';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.replay_lag_bytes IS 'WAL bytes not yet replayed';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.heartbeat_lag IS 'End-to-end lag from the heartbeat';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.replay_lag IS 'PostgreSQL''s replay_lag (NULL when idle and caught up)';
COMMENT ON COLUMN warehouse.vw_replication_lag_current.slot_retained_bytes IS 'WAL kept on the primary for this replica';

CREATE VIEW warehouse.vw_replication_lag_per_minute AS
SELECT date_trunc('minute', sampled_at) AS minute, replica,
	   max(replay_lag_bytes) AS max_replay_lag_bytes, avg(replay_lag_bytes)::bigint AS avg_replay_lag_bytes,
	   extract(epoch FROM max(heartbeat_lag))::numeric(12,3) AS max_heartbeat_lag_seconds,
	   extract(epoch FROM avg(heartbeat_lag))::numeric(12,3) AS avg_heartbeat_lag_seconds,
	   count(*) FILTER (WHERE status = 'missing') AS missing_samples
  FROM warehouse.replication_lag_history
 GROUP BY 1, 2;
COMMENT ON VIEW warehouse.vw_replication_lag_per_minute IS 'Replication lag per replica and minute, for charts';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.minute IS 'The minute';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.replica IS 'Replica name';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.max_replay_lag_bytes IS 'Largest replay lag in bytes during the minute';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.avg_replay_lag_bytes IS 'Average replay lag in bytes during the minute';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.max_heartbeat_lag_seconds IS 'Largest heartbeat lag in seconds during the minute';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.avg_heartbeat_lag_seconds IS 'Average heartbeat lag in seconds during the minute';
COMMENT ON COLUMN warehouse.vw_replication_lag_per_minute.missing_samples IS 'Samples in which the replica was expected but not connected';
GRANT SELECT ON warehouse.replication_lag_history, warehouse.vw_replication_lag_current,
	warehouse.vw_replication_lag_per_minute TO warehouse_reader;

-- ---------------------------------------------------------------------------
-- Privileges: least privilege per group role
-- ---------------------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA operational FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA operational FROM PUBLIC;
REVOKE ALL ON FUNCTION operational.post_payment(bigint, numeric, text, numeric, text, timestamptz) FROM PUBLIC;

GRANT USAGE ON SCHEMA operational TO app_user, readonly_user, etl_reader;

-- The application: reads everything it serves, writes customers, loans and
-- payments; never deletes, never touches the audit log.
GRANT SELECT ON operational.customers, operational.loan_products, operational.loans,
	operational.payments, operational.vw_active_loans, operational.vw_customer_payment_summary
	TO app_user;
GRANT INSERT, UPDATE ON operational.customers, operational.loans, operational.payments TO app_user;
GRANT USAGE ON SEQUENCE operational.customers_customer_id_seq, operational.loans_loan_id_seq,
	operational.payments_payment_id_seq TO app_user;
GRANT EXECUTE ON FUNCTION operational.post_payment(bigint, numeric, text, numeric, text, timestamptz) TO app_user;

-- Reporting: reads business data and views, not the audit trail.
GRANT SELECT ON operational.customers, operational.loan_products, operational.loans,
	operational.payments, operational.vw_active_loans, operational.vw_customer_payment_summary
	TO readonly_user;

-- The ETL: reads the source tables and the audit trail it extracts from.
GRANT SELECT ON operational.customers, operational.loan_products, operational.loans,
	operational.payments, operational.audit_log
	TO etl_reader;
