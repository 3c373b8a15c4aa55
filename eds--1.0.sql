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
