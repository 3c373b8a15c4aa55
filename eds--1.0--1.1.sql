/* eds--1.0--1.1.sql: upgrade of the eds extension from 1.0 to 1.1 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "ALTER EXTENSION eds UPDATE TO '1.1'" to load this file. \quit

/*
 * 1.1: the ETL decides from state, never from the operations logged.
 *
 * A key's row as of the run's snapshot is the truth: if it exists the
 * warehouse holds exactly that (any earlier copy is removed wherever it
 * lives), if it does not the warehouse drops it.  No path assumes a key is
 * new.  What that needs, and what else 1.1 brings (docs/etl.md):
 *   - eds.fact_payment_keys: where each payment's fact lives, so an earlier
 *     copy is found with one lookup, whatever month it was filed under;
 *   - TRUNCATE is captured (op 'T'); a window holding one makes the run a
 *     resync: every source row as of the snapshot, and every warehouse key
 *     missing from it removed;
 *   - dim_loan.product_id and eds.loan_products_loaded, so a product rename
 *     reaches every loan of the product;
 *   - the source's identity is remembered, and a different one refused;
 *   - fact_loans.total_paid is numeric(30,2) (numeric(16,2) overflowed on
 *     a large loan and stopped every run);
 *   - a stalled window says what holds it (audit.etl_runs.window_held_by)
 *     and eds_health() warns after eds.etl_stall_warn;
 *   - eds_reconcile() compares digests of every copied attribute.
 * The install script of 1.1 is eds--1.0.sql followed by this file (built by
 * the Makefile), so an upgraded database and a fresh one are the same.
 */

-- ===========================================================================
-- Change capture (source side): TRUNCATE too
-- ===========================================================================
ALTER TABLE eds.change_log DROP CONSTRAINT change_log_op_check;
ALTER TABLE eds.change_log ADD CONSTRAINT change_log_op_check CHECK (op IN ('I', 'U', 'D', 'T'));
COMMENT ON COLUMN eds.change_log.op IS 'I insert, U update, D delete (of key pk), T truncate of the whole table (pk 0)';

COMMENT ON FUNCTION eds.capture_change() IS
	'Change-capture trigger: AFTER INSERT/UPDATE/DELETE FOR EACH ROW records the changed key, AFTER TRUNCATE FOR EACH STATEMENT records the truncation, in eds.change_log for the ETL';

-- A truncated table logs no row events: the statement trigger records it,
-- and the run that reads it reloads every key (a resync).
CREATE TRIGGER customers_capture_truncate AFTER TRUNCATE ON operational.customers
	FOR EACH STATEMENT EXECUTE FUNCTION eds.capture_change();
CREATE TRIGGER loans_capture_truncate AFTER TRUNCATE ON operational.loans
	FOR EACH STATEMENT EXECUTE FUNCTION eds.capture_change();
CREATE TRIGGER payments_capture_truncate AFTER TRUNCATE ON operational.payments
	FOR EACH STATEMENT EXECUTE FUNCTION eds.capture_change();

-- ===========================================================================
-- Warehouse side: state the key-state merge needs
-- ===========================================================================

-- Where each payment's fact is filed.  fact_payments is partitioned by
-- payment_date, so its key is only unique per partition; this table is the
-- one place that knows, for a payment id, which partition holds its fact.
CREATE TABLE eds.fact_payment_keys (
	payment_id		bigint PRIMARY KEY,
	payment_date	timestamptz NOT NULL
);
COMMENT ON TABLE eds.fact_payment_keys IS
	'Every payment in warehouse.fact_payments with the date its fact is filed under: the ETL finds a payment''s earlier fact here, whatever partition it is in';
INSERT INTO eds.fact_payment_keys SELECT payment_id, payment_date FROM warehouse.fact_payments;
SELECT pg_catalog.pg_extension_config_dump('eds.fact_payment_keys', '');

-- The products as last loaded, so a renamed product is found without
-- scanning the loans.  A cache: not dumped (a restored warehouse's first
-- run compares every product with dim_loan once).
CREATE TABLE eds.loan_products_loaded (
	product_id		integer PRIMARY KEY,
	product_name	text,
	product_type	text
);
COMMENT ON TABLE eds.loan_products_loaded IS
	'The source''s loan products as the warehouse last loaded them: a product whose name or type changed is applied to every dim_loan row of the product';

-- The summaries move by deltas (eds.refresh_summaries): each row is found
-- by its key.  A loan without a branch has a NULL branch_code, one group.
DROP INDEX eds.payments_by_month_month_idx;
CREATE UNIQUE INDEX payments_by_month_key ON eds.payments_by_month (month, branch_code, method_sk)
	NULLS NOT DISTINCT;

ALTER TABLE warehouse.dim_loan ADD COLUMN product_id integer;
COMMENT ON COLUMN warehouse.dim_loan.product_id IS 'Source id of the loan product (operational.loan_products)';
CREATE INDEX dim_loan_product_id_idx ON warehouse.dim_loan (product_id);

-- numeric(16,2) overflowed ("numeric field overflow") on a loan paid more
-- than 10^14 in total and stopped every run; 28 digits before the point
-- hold the sum of more payments of the largest numeric(14,2) amount than a
-- loan could have.
ALTER TABLE warehouse.fact_loans ALTER COLUMN total_paid TYPE numeric(30,2);

-- What a run resyncs, and which source the warehouse was loaded from.
ALTER TABLE audit.etl_state DROP COLUMN probe_inserts;
ALTER TABLE audit.etl_state ADD COLUMN resync boolean NOT NULL DEFAULT false;
ALTER TABLE audit.etl_state ADD COLUMN source_id text;
COMMENT ON COLUMN audit.etl_state.resync IS
	'When true, the next run reads every source row and removes what the source no longer has (set by eds_etl_resync(); a TRUNCATE on the source has the same effect for its run)';
COMMENT ON COLUMN audit.etl_state.source_id IS
	'The source the warehouse was loaded from: its system identifier and database name; a run from another one is refused';
-- Warehouses loaded by 1.0 have no dim_loan.product_id yet: their next run
-- reads every row once (and fills it).
UPDATE audit.etl_state SET resync = true;

ALTER TABLE audit.etl_runs ADD COLUMN window_held_by text;
ALTER TABLE audit.etl_runs ADD COLUMN changes_waiting boolean;
ALTER TABLE audit.etl_runs ADD COLUMN sqlstate text;
COMMENT ON COLUMN audit.etl_runs.window_held_by IS
	'The source transaction that ends the run''s window (the oldest one still open at its snapshot): session or prepared transaction, who, since when; NULL when none was open';
COMMENT ON COLUMN audit.etl_runs.changes_waiting IS
	'Whether the source had committed changes beyond the window at the snapshot (they wait for the holding transaction to end)';
COMMENT ON COLUMN audit.etl_runs.sqlstate IS 'SQLSTATE of the error of a failed run';
ALTER TABLE audit.etl_runs ADD CONSTRAINT etl_runs_mode_check CHECK (mode IN ('full', 'incremental', 'resync'));

-- ===========================================================================
-- The merge: one function per target, and an orchestrator
-- ===========================================================================
DROP FUNCTION eds.load_staged(bigint, timestamptz, boolean, boolean, bigint);

/*
 * A resync stages every source row: whatever the warehouse holds that is not
 * staged was removed from the source, so it is staged as deleted and the
 * merges below remove it like any deleted key.
 */
CREATE FUNCTION eds.stage_missing_as_deleted() RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	INSERT INTO staging.stg_customers (customer_id, is_deleted, touched)
	SELECT d.customer_id, true, true FROM warehouse.dim_customer d
	 WHERE d.is_current AND NOT d.is_deleted
	   AND NOT EXISTS (SELECT FROM staging.stg_customers s WHERE s.customer_id = d.customer_id);
	INSERT INTO staging.stg_loans (loan_id, is_deleted, touched)
	SELECT d.loan_id, true, true FROM warehouse.dim_loan d
	 WHERE NOT d.is_deleted
	   AND NOT EXISTS (SELECT FROM staging.stg_loans s WHERE s.loan_id = d.loan_id);
	INSERT INTO staging.stg_payments (payment_id, is_deleted, touched)
	SELECT k.payment_id, true, true FROM eds.fact_payment_keys k
	 WHERE NOT EXISTS (SELECT FROM staging.stg_payments s WHERE s.payment_id = k.payment_id);
END;
COMMENT ON FUNCTION eds.stage_missing_as_deleted() IS
	'Resync: stages as deleted every warehouse key that the complete staging does not hold';
REVOKE ALL ON FUNCTION eds.stage_missing_as_deleted() FROM PUBLIC;

/*
 * dim_customer, SCD type 2 on name, city and segment; email, phone and
 * country are type 1.  Fills eds_changed_customers with the customers that
 * got a new version.  Returns {read, inserted, updated, new_versions, deleted}.
 */
CREATE FUNCTION eds.merge_dim_customer(p_source_time timestamptz) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $merge$
DECLARE
	c_read bigint; c_new bigint; c_changed bigint; c_type1 bigint; c_deleted bigint;
BEGIN
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

	-- Customers the warehouse has never seen.
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

	RETURN jsonb_build_object('read', c_read, 'inserted', c_new, 'updated', c_changed + c_type1,
							  'new_versions', c_changed, 'deleted', c_deleted);
END
$merge$;
COMMENT ON FUNCTION eds.merge_dim_customer(timestamptz) IS
	'ETL merge step: staged customers into warehouse.dim_customer (SCD type 2 on name, city, segment)';
REVOKE ALL ON FUNCTION eds.merge_dim_customer(timestamptz) FROM PUBLIC;

/*
 * dim_loan, type 1; a deleted loan stays, flagged.  Products come from the
 * complete product list every run reads: a renamed product reaches every
 * loan of it.  Fills eds_changed_loans (loans whose row changed).
 */
CREATE FUNCTION eds.merge_dim_loan() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $merge$
DECLARE
	l_read bigint; l_new bigint; l_changed bigint; l_deleted bigint; l_products bigint;
BEGIN
	SELECT count(*) INTO l_read FROM staging.stg_loans;

	WITH up AS (
		INSERT INTO warehouse.dim_loan AS d
			(loan_id, customer_id, product_id, product_name, product_type, amount, interest_rate, tenure_months,
			 status, branch_code, loan_officer, disbursed_at, maturity_date, is_deleted)
		SELECT s.loan_id, s.customer_id, s.product_id, p.product_name, p.product_type, s.amount, s.interest_rate,
			   s.tenure_months, s.status, s.branch_code, s.loan_officer, s.disbursed_at, s.maturity_date, false
		  FROM staging.stg_loans s LEFT JOIN staging.stg_loan_products p USING (product_id)
		 WHERE NOT s.is_deleted
		ON CONFLICT (loan_id) DO UPDATE
		   SET customer_id = excluded.customer_id, product_id = excluded.product_id,
			   product_name = excluded.product_name,
			   product_type = excluded.product_type, amount = excluded.amount,
			   interest_rate = excluded.interest_rate, tenure_months = excluded.tenure_months,
			   status = excluded.status, branch_code = excluded.branch_code,
			   loan_officer = excluded.loan_officer, disbursed_at = excluded.disbursed_at,
			   maturity_date = excluded.maturity_date, is_deleted = false
		 WHERE (d.customer_id, d.product_id, d.product_name, d.product_type, d.amount, d.interest_rate,
				d.tenure_months, d.status, d.branch_code, d.loan_officer, d.disbursed_at, d.maturity_date,
				d.is_deleted)
			   IS DISTINCT FROM
			   (excluded.customer_id, excluded.product_id, excluded.product_name, excluded.product_type,
				excluded.amount, excluded.interest_rate, excluded.tenure_months, excluded.status,
				excluded.branch_code, excluded.loan_officer, excluded.disbursed_at, excluded.maturity_date, false)
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

	-- Products whose name or type changed since they were last loaded, and
	-- the loans of them that no staged row has just set.
	WITH renamed AS (
		SELECT p.product_id, p.product_name, p.product_type
		  FROM staging.stg_loan_products p
		  LEFT JOIN eds.loan_products_loaded o USING (product_id)
		 WHERE (o.product_name, o.product_type) IS DISTINCT FROM (p.product_name, p.product_type)
	)
	UPDATE warehouse.dim_loan d
	   SET product_name = r.product_name, product_type = r.product_type
	  FROM renamed r
	 WHERE d.product_id = r.product_id
	   AND (d.product_name, d.product_type) IS DISTINCT FROM (r.product_name, r.product_type);
	GET DIAGNOSTICS l_products = ROW_COUNT;
	DELETE FROM eds.loan_products_loaded o
	 WHERE NOT EXISTS (SELECT FROM staging.stg_loan_products p WHERE p.product_id = o.product_id);
	INSERT INTO eds.loan_products_loaded AS o SELECT product_id, product_name, product_type FROM staging.stg_loan_products
	ON CONFLICT (product_id) DO UPDATE SET product_name = excluded.product_name, product_type = excluded.product_type
	 WHERE (o.product_name, o.product_type) IS DISTINCT FROM (excluded.product_name, excluded.product_type);

	RETURN jsonb_build_object('read', l_read, 'inserted', l_new, 'updated', l_changed + l_products,
							  'deleted', l_deleted);
END
$merge$;
COMMENT ON FUNCTION eds.merge_dim_loan() IS
	'ETL merge step: staged loans and the product list into warehouse.dim_loan (type 1)';
REVOKE ALL ON FUNCTION eds.merge_dim_loan() FROM PUBLIC;

/*
 * fact_payments.  Every staged payment key ends as its staged state: the
 * fact it should be (its loan and the customer version current at its
 * date) replaces whatever fact the key has, found through
 * eds.fact_payment_keys in whatever partition; a key with no such fact
 * (deleted, or rejected) loses its fact.  An identical fact is left alone,
 * so a no-op source update writes nothing.  Fills eds_payment_delta with
 * -1 for each fact removed and +1 for each written, with what the totals
 * and summaries need of it.
 */
CREATE FUNCTION eds.merge_fact_payments(p_run_id bigint, p_full boolean, p_payments_read bigint) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $merge$
DECLARE
	p_new bigint; p_changed bigint; p_deleted bigint; p_rejected bigint; p_targets bigint;
BEGIN
	IF p_full THEN
		-- The dimensions grew from nothing: the fact insert must join them by hash.
		ANALYZE warehouse.dim_customer, warehouse.dim_loan;
	END IF;

	PERFORM eds.ensure_fact_partitions(NOT p_full);

	-- The fact each staged payment should be, keyed to the customer version
	-- current at the payment's time (version 1 also covers anything earlier).
	CREATE TEMP TABLE eds_payment_target ON COMMIT DROP AS
	SELECT s.payment_id, s.payment_date, to_char(s.payment_date AT TIME ZONE 'UTC', 'YYYYMMDD')::integer AS date_sk,
		   c.customer_sk, l.loan_sk, coalesce(m.method_sk, 0)::smallint AS method_sk, l.customer_id, s.loan_id,
		   s.amount AS payment_amount, s.principal_portion, s.interest_portion, s.penalty_portion,
		   c.segment AS customer_segment, l.status AS loan_status, l.branch_code
	  FROM staging.stg_payments s
	  JOIN warehouse.dim_loan l ON l.loan_id = s.loan_id AND NOT l.is_deleted
	  JOIN warehouse.dim_customer c
		ON c.customer_id = l.customer_id
	   AND (c.version_no = 1 OR c.effective_from <= s.payment_date)
	   AND s.payment_date < c.effective_to
	  LEFT JOIN warehouse.dim_payment_method m ON m.method_code = s.payment_method
	 WHERE NOT s.is_deleted AND s.problem IS NULL;
	IF NOT p_full THEN
		ANALYZE eds_payment_target;
		CREATE INDEX ON eds_payment_target (payment_id);
	END IF;

	GET DIAGNOSTICS p_targets = ROW_COUNT;

	-- Rows the warehouse cannot take are rejected, with the reason: a
	-- payment that breaks a rule, or has no target (its loan, or its
	-- loan's customer, is not on the source).  When every staged payment
	-- has its target (a first load, usually) there is nothing to look for.
	p_rejected := 0;
	IF p_targets < (SELECT count(*) FROM staging.stg_payments WHERE NOT is_deleted) THEN
		INSERT INTO audit.etl_rejects (run_id, table_name, source_key, reason, row_data)
		SELECT p_run_id, 'payments', s.payment_id,
			   coalesce(s.problem, 'its loan is not on the source'),
			   to_jsonb(s) - 'is_deleted' - 'touched' - 'problem'
		  FROM staging.stg_payments s
		 WHERE NOT s.is_deleted
		   AND (s.problem IS NOT NULL
				OR NOT EXISTS (SELECT FROM eds_payment_target t WHERE t.payment_id = s.payment_id));
		GET DIAGNOSTICS p_rejected = ROW_COUNT;
	END IF;

	IF p_full THEN
		-- Nothing existed: every target is new.  Partitions were created bare
		-- and get their indexes after the insert (ensure_fact_partitions).
		INSERT INTO warehouse.fact_payments
			(payment_id, payment_date, date_sk, customer_sk, loan_sk, method_sk, customer_id, loan_id,
			 payment_amount, principal_portion, interest_portion, penalty_portion,
			 customer_segment, loan_status, branch_code)
		SELECT * FROM eds_payment_target;
		GET DIAGNOSTICS p_new = ROW_COUNT;
		-- The map follows the facts: a reload from scratch starts it anew,
		-- its key built once after the rows (as the partitions' indexes are).
		TRUNCATE eds.fact_payment_keys;
		ALTER TABLE eds.fact_payment_keys DROP CONSTRAINT fact_payment_keys_pkey;
		INSERT INTO eds.fact_payment_keys SELECT payment_id, payment_date FROM eds_payment_target;
		ALTER TABLE eds.fact_payment_keys ADD CONSTRAINT fact_payment_keys_pkey PRIMARY KEY (payment_id);
		PERFORM eds.index_fact_partitions();
		RETURN jsonb_build_object('read', p_payments_read, 'inserted', p_new, 'updated', 0,
								  'deleted', 0, 'rejected', p_rejected);
	END IF;

	-- The facts the staged keys have now, wherever they are filed: first
	-- where (usually few: new payments have no fact yet), then each fact
	-- from its own partition.
	CREATE TEMP TABLE eds_payment_filed ON COMMIT DROP AS
	SELECT k.payment_id, k.payment_date
	  FROM eds.fact_payment_keys k
	 WHERE k.payment_id = ANY (ARRAY(SELECT payment_id FROM staging.stg_payments));
	ANALYZE eds_payment_filed;
	CREATE TEMP TABLE eds_payment_current ON COMMIT DROP AS
	SELECT f.*
	  FROM eds_payment_filed k
	  JOIN warehouse.fact_payments f ON f.payment_id = k.payment_id AND f.payment_date = k.payment_date;
	ANALYZE eds_payment_current;

	-- Remove each fact that is not exactly its key's target.
	WITH stale AS (
		SELECT e.payment_id, e.payment_date FROM eds_payment_current e
		 WHERE NOT EXISTS (SELECT FROM eds_payment_target t
							WHERE t.payment_id = e.payment_id AND ROW(t.*) IS NOT DISTINCT FROM ROW(e.*))
	), gone AS (
		DELETE FROM warehouse.fact_payments f
		 USING stale x
		 WHERE f.payment_id = x.payment_id AND f.payment_date = x.payment_date
		RETURNING f.*
	), unfiled AS (
		DELETE FROM eds.fact_payment_keys k USING gone g WHERE k.payment_id = g.payment_id
	)
	INSERT INTO eds_payment_delta
	SELECT loan_id, payment_id, -1, payment_amount, payment_date, branch_code, method_sk,
		   principal_portion, interest_portion, penalty_portion
	  FROM gone;

	-- Write each target that is not already there, and file it.
	WITH fresh AS (
		INSERT INTO warehouse.fact_payments
			(payment_id, payment_date, date_sk, customer_sk, loan_sk, method_sk, customer_id, loan_id,
			 payment_amount, principal_portion, interest_portion, penalty_portion,
			 customer_segment, loan_status, branch_code)
		SELECT t.* FROM eds_payment_target t
		 WHERE NOT EXISTS (SELECT FROM eds_payment_current e
							WHERE e.payment_id = t.payment_id AND ROW(t.*) IS NOT DISTINCT FROM ROW(e.*))
		RETURNING *
	), filed AS (
		INSERT INTO eds.fact_payment_keys SELECT payment_id, payment_date FROM fresh
	)
	INSERT INTO eds_payment_delta
	SELECT loan_id, payment_id, 1, payment_amount, payment_date, branch_code, method_sk,
		   principal_portion, interest_portion, penalty_portion
	  FROM fresh;

	SELECT count(*) FILTER (WHERE ins AND NOT del), count(*) FILTER (WHERE ins AND del),
		   count(*) FILTER (WHERE del AND NOT ins)
	  INTO p_new, p_changed, p_deleted
	  FROM (SELECT payment_id, bool_or(sign = 1) AS ins, bool_or(sign = -1) AS del
			  FROM eds_payment_delta GROUP BY payment_id) x;

	RETURN jsonb_build_object('read', p_payments_read, 'inserted', p_new, 'updated', p_changed,
							  'deleted', p_deleted, 'rejected', p_rejected);
END
$merge$;
COMMENT ON FUNCTION eds.merge_fact_payments(bigint, boolean, bigint) IS
	'ETL merge step: every staged payment key''s fact becomes its staged state (replaced wherever it is filed, or removed)';
REVOKE ALL ON FUNCTION eds.merge_fact_payments(bigint, boolean, bigint) FROM PUBLIC;

/*
 * The attributes facts copy from their dimensions, after the dimensions
 * changed: a new customer version takes over the facts from its start, a
 * loan moved to another customer takes its payments along, a loan's status
 * and branch are copied onto its payments.  Only facts whose value differs
 * are written; a payment that changes branch is moved between the branches
 * of the monthly summary (eds_payment_moves).
 */
CREATE FUNCTION eds.refresh_fact_attributes() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $refresh$
DECLARE
	versions_from timestamptz;
BEGIN
	-- Only payments made since the earliest new version can change, so only
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

	UPDATE warehouse.fact_payments f
	   SET customer_id = c.customer_id, customer_sk = c.customer_sk, customer_segment = c.segment
	  FROM warehouse.dim_loan l
	  JOIN warehouse.dim_customer c ON c.customer_id = l.customer_id
	 WHERE l.loan_id IN (SELECT loan_id FROM eds_changed_loans)
	   AND f.loan_id = l.loan_id AND f.customer_id <> l.customer_id
	   AND (c.version_no = 1 OR c.effective_from <= f.payment_date) AND f.payment_date < c.effective_to;

	INSERT INTO eds_payment_moves
	SELECT f.payment_id, f.payment_date, f.branch_code, l.branch_code, l.status, f.method_sk,
		   f.payment_amount, f.principal_portion, f.interest_portion, f.penalty_portion
	  FROM warehouse.dim_loan l
	  JOIN warehouse.fact_payments f ON f.loan_id = l.loan_id
	 WHERE l.loan_id IN (SELECT loan_id FROM eds_changed_loans)
	   AND (f.loan_status, f.branch_code) IS DISTINCT FROM (l.status, l.branch_code);
	IF FOUND THEN
		ANALYZE eds_payment_moves;
		UPDATE warehouse.fact_payments f
		   SET loan_status = m.loan_status, branch_code = m.new_branch
		  FROM eds_payment_moves m
		 WHERE f.payment_id = m.payment_id AND f.payment_date = m.payment_date;
	END IF;
END
$refresh$;
COMMENT ON FUNCTION eds.refresh_fact_attributes() IS
	'ETL merge step: copies changed customer versions, borrowers, loan status and branch onto the facts that differ';
REVOKE ALL ON FUNCTION eds.refresh_fact_attributes() FROM PUBLIC;

/*
 * fact_loans: one row per loan that exists; its payment totals move by the
 * run's fact deltas.  A row the run creates takes its totals from the facts
 * themselves (the warehouse may hold facts of the loan already).  Each
 * statement that moves a loan's totals says by how much, per customer, in
 * eds_customer_moves; a customer whose latest payment may be gone, or whose
 * loans changed hands, is marked to be summed again instead.
 */
CREATE FUNCTION eds.merge_fact_loans(p_full boolean) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $merge$
DECLARE
	f_new bigint; f_changed bigint; f_deleted bigint;
BEGIN
	CREATE TEMP TABLE eds_new_fact_loans (loan_id bigint PRIMARY KEY) ON COMMIT DROP;

	-- Loans moving to another borrower: both borrowers are summed again.
	IF NOT p_full THEN
		INSERT INTO eds_customer_moves (customer_id, recheck)
		SELECT x.customer_id, true
		  FROM staging.stg_loans s
		  JOIN warehouse.fact_loans f USING (loan_id)
		 CROSS JOIN LATERAL (VALUES (f.customer_id), (s.customer_id)) AS x(customer_id)
		 WHERE NOT s.is_deleted AND f.customer_id IS DISTINCT FROM s.customer_id AND x.customer_id IS NOT NULL;
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
		  -- A first load takes the totals from the facts it just loaded.
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
		RETURNING f.loan_id, (xmax = 0) AS inserted
	), created AS (
		INSERT INTO eds_new_fact_loans SELECT loan_id FROM up WHERE inserted AND NOT p_full
	)
	SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) INTO f_new, f_changed FROM up;

	UPDATE warehouse.fact_loans f
	   SET customer_sk = c.customer_sk, customer_segment = c.segment
	  FROM warehouse.dim_customer c
	 WHERE c.customer_id IN (SELECT customer_id FROM eds_changed_customers) AND c.is_current
	   AND f.customer_id = c.customer_id
	   AND (f.customer_sk, f.customer_segment) IS DISTINCT FROM (c.customer_sk, c.segment);

	WITH gone AS (
		DELETE FROM warehouse.fact_loans f
		 USING staging.stg_loans s
		 WHERE s.is_deleted AND f.loan_id = s.loan_id
		RETURNING f.customer_id, f.payment_count
	), noted AS (
		INSERT INTO eds_customer_moves (customer_id, recheck)
		SELECT customer_id, true FROM gone WHERE payment_count > 0
	)
	SELECT count(*) INTO f_deleted FROM gone;

	IF NOT p_full THEN
		-- Rows this run created: totals of the facts as they now stand.
		WITH totalled AS (
			UPDATE warehouse.fact_loans f
			   SET total_paid = t.paid, payment_count = t.payments, last_payment_date = t.last_paid
			  FROM (SELECT n.loan_id, coalesce(sum(p.payment_amount), 0) AS paid, count(p.loan_id) AS payments,
						   max(p.payment_date) AS last_paid
					  FROM eds_new_fact_loans n LEFT JOIN warehouse.fact_payments p ON p.loan_id = n.loan_id
					 GROUP BY n.loan_id) t
			 WHERE f.loan_id = t.loan_id AND t.payments > 0
			RETURNING f.customer_id, f.total_paid, f.payment_count, f.last_payment_date
		)
		INSERT INTO eds_customer_moves
		SELECT customer_id, total_paid, payment_count, 1, last_payment_date, false FROM totalled;

		-- Rows that existed: the latest payment only moves forward, unless the
		-- latest one was removed and nothing as late came in: then it is
		-- looked up again (and the customer summed again).
		WITH moved AS (
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
			 WHERE f.loan_id = d.loan_id
			   AND NOT EXISTS (SELECT FROM eds_new_fact_loans n WHERE n.loan_id = d.loan_id)
			RETURNING f.customer_id, d.amount, d.payments, f.payment_count, f.last_payment_date, d.last_removed
		)
		INSERT INTO eds_customer_moves
		SELECT customer_id, amount, payments,
			   (payment_count > 0)::integer - (payment_count - payments > 0)::integer, last_payment_date,
			   last_removed IS NOT NULL AND (last_payment_date IS NULL OR last_removed >= last_payment_date)
		  FROM moved;
	END IF;

	RETURN jsonb_build_object('inserted', f_new, 'updated', f_changed, 'deleted', f_deleted);
END
$merge$;
COMMENT ON FUNCTION eds.merge_fact_loans(boolean) IS
	'ETL merge step: staged loans into warehouse.fact_loans, payment totals moved by the run''s fact deltas';
REVOKE ALL ON FUNCTION eds.merge_fact_loans(boolean) FROM PUBLIC;

/*
 * The summaries behind the views move by what the run changed, the way
 * incremental view maintenance does: + each fact written, - each fact
 * removed, and a payment that changed branch moves between branches; a
 * customer's totals by the difference between the touched fact_loans rows
 * after and before.  Nothing is re-aggregated from the facts, except a
 * customer whose latest payment may be gone (looked up again from
 * fact_loans).  After a first load both are computed whole.
 */
CREATE FUNCTION eds.refresh_summaries(p_full boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $refresh$
DECLARE
	recheck_ids bigint[];
BEGIN
	IF p_full THEN
		PERFORM eds.summarize_payments('-infinity', 'infinity');
		PERFORM eds.summarize_customers(NULL);
		RETURN;
	END IF;

	WITH moves AS (
		SELECT paid_at, branch_code, method_sk, sign, amount, principal, interest, penalty
		  FROM eds_payment_delta
		UNION ALL
		SELECT m.payment_date, b.branch_code, m.method_sk, b.sign,
			   m.amount, m.principal, m.interest, m.penalty
		  FROM eds_payment_moves m
		 CROSS JOIN LATERAL (VALUES (m.old_branch, -1), (m.new_branch, 1)) AS b(branch_code, sign)
		 WHERE m.old_branch IS DISTINCT FROM m.new_branch
	), delta AS (
		SELECT date_trunc('month', paid_at AT TIME ZONE 'UTC')::date AS month, branch_code, method_sk,
			   sum(sign) AS payments, sum(sign * amount) AS amount, sum(sign * principal) AS principal,
			   sum(sign * interest) AS interest, sum(sign * penalty) AS penalty
		  FROM moves GROUP BY 1, 2, 3
	)
	INSERT INTO eds.payments_by_month AS s
		(month, branch_code, method_sk, payment_count, total_amount, principal, interest, penalty)
	SELECT month, branch_code, method_sk, payments, amount, principal, interest, penalty
	  FROM delta
	 WHERE (payments, amount, principal, interest, penalty) <> (0, 0, 0, 0, 0)
	ON CONFLICT (month, branch_code, method_sk) DO UPDATE
	   SET payment_count = s.payment_count + excluded.payment_count,
		   total_amount = s.total_amount + excluded.total_amount,
		   principal = s.principal + excluded.principal,
		   interest = s.interest + excluded.interest,
		   penalty = s.penalty + excluded.penalty;
	DELETE FROM eds.payments_by_month WHERE payment_count = 0;

	-- Customer totals: the moves summed per customer.
	INSERT INTO eds_customer_delta
	SELECT customer_id, sum(total_paid), sum(payment_count), sum(loan_count), max(last_after), bool_or(recheck)
	  FROM eds_customer_moves GROUP BY customer_id;
	SELECT array_agg(customer_id) INTO recheck_ids FROM eds_customer_delta WHERE recheck;

	INSERT INTO eds.customer_payment_totals AS t
		(customer_id, total_paid, payment_count, loan_count, last_payment_date)
	SELECT customer_id, total_paid, payment_count, loan_count, last_after
	  FROM eds_customer_delta
	 WHERE NOT recheck AND ((total_paid, payment_count, loan_count) <> (0, 0, 0) OR last_after IS NOT NULL)
	ON CONFLICT (customer_id) DO UPDATE
	   SET total_paid = t.total_paid + excluded.total_paid,
		   payment_count = t.payment_count + excluded.payment_count,
		   loan_count = t.loan_count + excluded.loan_count,
		   last_payment_date = greatest(t.last_payment_date, excluded.last_payment_date);
	DELETE FROM eds.customer_payment_totals t
	 USING eds_customer_delta d
	 WHERE t.customer_id = d.customer_id AND NOT d.recheck AND t.payment_count <= 0;
	IF recheck_ids IS NOT NULL THEN
		PERFORM eds.summarize_customers(recheck_ids);
	END IF;
END
$refresh$;
COMMENT ON FUNCTION eds.refresh_summaries(boolean) IS
	'ETL merge step: moves the view summaries by the run''s changes (computes them whole after a first load)';
REVOKE ALL ON FUNCTION eds.refresh_summaries(boolean) FROM PUBLIC;

/*
 * The merge of one run, called by the ETL worker inside the transaction that
 * also moves the watermark.  Staging holds, for every key that changed in
 * the run's window (and every loan and customer those rows reference), the
 * row as of one source snapshot, or is_deleted; after a resync, every
 * source row.  Each step makes a key's warehouse rows match its staged
 * state, whatever the warehouse held before, so a key seen by several runs
 * (a first load and the window after it, a delete and a re-insert split
 * across windows) ends in the same state.
 * p_full: the warehouse is empty (first load).  p_resync: staging holds
 * every source row, so what it lacks was removed.
 */
CREATE FUNCTION eds.load_staged(p_run_id bigint, p_source_time timestamptz, p_full boolean, p_resync boolean,
								p_payments_read bigint)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Just-in-time compilation costs more than it saves on these statements
-- (measured: 0.66 s of a 1.9 s run at 1M payments).  The lookups by key the
-- merge makes read index pages a warehouse keeps cached: costing them as
-- random disk reads made the planner scan whole tables for a few rows.
SET jit = off
SET random_page_cost = 1.1
AS $load$
DECLARE
	customers jsonb;
	loans jsonb;
	payments jsonb;
	fact_loans jsonb;
BEGIN
	CREATE TEMP TABLE eds_changed_customers (customer_id bigint PRIMARY KEY) ON COMMIT DROP;
	CREATE TEMP TABLE eds_changed_loans (loan_id bigint PRIMARY KEY) ON COMMIT DROP;
	-- What the run changed, for the totals and summaries.
	CREATE TEMP TABLE eds_payment_delta (loan_id bigint, payment_id bigint, sign integer, amount numeric,
										 paid_at timestamptz, branch_code text, method_sk smallint,
										 principal numeric, interest numeric, penalty numeric) ON COMMIT DROP;
	CREATE TEMP TABLE eds_payment_moves (payment_id bigint, payment_date timestamptz, old_branch text,
										 new_branch text, loan_status text, method_sk smallint, amount numeric,
										 principal numeric, interest numeric, penalty numeric) ON COMMIT DROP;
	CREATE TEMP TABLE eds_customer_moves (customer_id bigint, total_paid numeric NOT NULL DEFAULT 0,
										  payment_count bigint NOT NULL DEFAULT 0,
										  loan_count integer NOT NULL DEFAULT 0, last_after timestamptz,
										  recheck boolean NOT NULL DEFAULT false) ON COMMIT DROP;
	CREATE TEMP TABLE eds_customer_delta (customer_id bigint PRIMARY KEY, total_paid numeric, payment_count bigint,
										  loan_count bigint, last_after timestamptz, recheck boolean)
		ON COMMIT DROP;

	IF p_resync AND NOT p_full THEN
		PERFORM eds.stage_missing_as_deleted();
	END IF;
	-- The planner must know how small (or large) this run is.
	ANALYZE staging.stg_loan_products, staging.stg_customers, staging.stg_loans, staging.stg_payments;

	PERFORM eds.record_lossy_rows(p_run_id);
	customers := eds.merge_dim_customer(p_source_time);
	loans := eds.merge_dim_loan();
	payments := eds.merge_fact_payments(p_run_id, p_full, p_payments_read);
	PERFORM eds.refresh_fact_attributes();
	fact_loans := eds.merge_fact_loans(p_full);
	PERFORM eds.refresh_summaries(p_full);

	-- After a first load the tables grew from nothing: plan later runs on
	-- real sizes (the fact partitions got theirs from their index builds).
	IF p_full THEN
		ANALYZE warehouse.fact_loans, eds.fact_payment_keys;
	END IF;

	RETURN jsonb_build_object('customers', customers, 'loans', loans, 'payments', payments,
							  'fact_loans', fact_loans);
END
$load$;
COMMENT ON FUNCTION eds.load_staged(bigint, timestamptz, boolean, boolean, bigint) IS
	'Merges the staged rows of one ETL run into the star schema (called by the ETL worker)';
REVOKE ALL ON FUNCTION eds.load_staged(bigint, timestamptz, boolean, boolean, bigint) FROM PUBLIC;

-- Asks the next run to read every source row and remove what the source no
-- longer has: after a restore or a move of the source, a purged change log,
-- or a doubt.
CREATE FUNCTION eds_etl_resync() RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $resync$
BEGIN
	UPDATE audit.etl_state SET resync = true, source_id = NULL;
	IF NOT FOUND THEN
		RETURN 'nothing loaded yet: the next run is a first load';
	END IF;
	RETURN 'the next eds_run_etl() reads every source row and makes the warehouse match it';
END
$resync$;
COMMENT ON FUNCTION eds_etl_resync() IS
	'Makes the next ETL run a resync: every source row read, the warehouse made to match it (accepts a new source database)';
REVOKE ALL ON FUNCTION eds_etl_resync() FROM PUBLIC;

-- ===========================================================================
-- Reconciliation without blind spots: a digest of every copied attribute
-- ===========================================================================
-- Both sides compute the same digests: rows in 256 buckets by key, each
-- bucket's rows as text in key order, hashed.  Times are compared as epoch
-- seconds and dates as ISO text, so the two sessions' TimeZone and DateStyle
-- do not matter, and text is hashed as UTF8 after the source replaced what
-- the warehouse encoding (the session's client_encoding) cannot hold, as the
-- ETL does.  Payments the warehouse rules refuse (eds.payment_problem) are
-- in audit.etl_rejects, not in the facts: the source leaves them out.
DROP FUNCTION eds.reconcile_source_figures();
DROP FUNCTION eds.reconcile_warehouse_figures();

CREATE FUNCTION eds.digest_bucket(rows_text text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN ('x' || left(md5(convert_to(rows_text, 'UTF8')), 12))::bit(48)::bigint;
COMMENT ON FUNCTION eds.digest_bucket(text) IS 'eds_reconcile(): a 48-bit number from the text of one bucket of rows (hashed as UTF8, whatever the database encoding)';
REVOKE ALL ON FUNCTION eds.digest_bucket(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.digest_bucket(text) TO etl_reader;

-- A payment month as reconcile keys show it; dates outside any month say so.
CREATE FUNCTION eds.reconcile_month(paid_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN isfinite(paid_at) THEN to_char(paid_at AT TIME ZONE 'UTC', 'YYYY-MM') ELSE paid_at::text END;
COMMENT ON FUNCTION eds.reconcile_month(timestamptz) IS 'eds_reconcile(): the UTC month of a payment (infinity and -infinity as such)';
REVOKE ALL ON FUNCTION eds.reconcile_month(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.reconcile_month(timestamptz) TO etl_reader;

CREATE FUNCTION eds.reconcile_source_figures() RETURNS TABLE (check_name text, check_key text, value numeric)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $src$
	WITH payments AS (
		SELECT p.* FROM operational.payments p
		 WHERE eds.payment_problem(p.loan_id, p.amount, p.principal_portion, p.interest_portion,
								   p.penalty_portion, p.payment_date) IS NULL
	)
	SELECT 'customers', 'count', count(*)::numeric FROM operational.customers
	UNION ALL
	SELECT 'loans', 'count', count(*) FROM operational.loans
	UNION ALL
	SELECT 'loans', 'outstanding', coalesce(sum(outstanding_balance), 0) FROM operational.loans
	UNION ALL
	SELECT 'loans by status', status, count(*) FROM operational.loans GROUP BY status
	UNION ALL
	SELECT 'payments', 'count', count(*) FROM payments
	UNION ALL
	SELECT 'payments', 'amount', coalesce(sum(amount), 0) FROM payments
	UNION ALL
	SELECT 'payments per month', eds.reconcile_month(payment_date) || ' count', count(*)
	  FROM payments GROUP BY 2
	UNION ALL
	SELECT 'payments per month', eds.reconcile_month(payment_date) || ' amount', sum(amount)
	  FROM payments GROUP BY 2
	UNION ALL
	SELECT 'customer attributes', (customer_id % 256)::text,
		   eds.digest_bucket(eds.encodable_text(
			   string_agg(concat_ws('|', customer_id, full_name, email, phone, city, country, segment),
						  ',' ORDER BY customer_id), current_setting('client_encoding')))
	  FROM operational.customers GROUP BY customer_id % 256
	UNION ALL
	SELECT 'loan attributes', (l.loan_id % 256)::text,
		   eds.digest_bucket(string_agg(concat_ws('|', l.loan_id, l.customer_id, p.product_name, p.product_type,
												  l.amount, l.interest_rate, l.tenure_months, l.status,
												  l.outstanding_balance,
												  eds.encodable_text(l.branch_code, current_setting('client_encoding')),
												  eds.encodable_text(l.loan_officer, current_setting('client_encoding')),
												  extract(epoch FROM l.disbursed_at),
												  to_char(l.maturity_date, 'YYYY-MM-DD')),
										',' ORDER BY l.loan_id))
	  FROM operational.loans l
	  LEFT JOIN (SELECT product_id, eds.encodable_text(product_name, current_setting('client_encoding')) AS product_name,
						eds.encodable_text(product_type, current_setting('client_encoding')) AS product_type
				   FROM operational.loan_products) p USING (product_id)
	 GROUP BY l.loan_id % 256
	UNION ALL
	SELECT 'payment attributes', (payment_id % 256)::text,
		   eds.digest_bucket(string_agg(concat_ws('|', payment_id, loan_id, amount, principal_portion,
												  interest_portion, penalty_portion, payment_method,
												  extract(epoch FROM payment_date)),
										',' ORDER BY payment_id))
	  FROM payments GROUP BY payment_id % 256
	UNION ALL
	SELECT 'fact_loans totals', 'loans whose total_paid or payment_count disagree with fact_payments', 0
	UNION ALL
	SELECT 'fact_payments customers', 'payments keyed to another customer than their loan''s', 0
	UNION ALL
	SELECT 'fact_payments keys', 'facts and eds.fact_payment_keys entries that do not match', 0
	UNION ALL
	SELECT 'view summaries', 'months, branches and methods whose summary disagrees with fact_payments', 0
	UNION ALL
	SELECT 'view summaries', 'customers whose totals disagree with fact_loans', 0
$src$;
COMMENT ON FUNCTION eds.reconcile_source_figures() IS 'Figures eds_reconcile() compares, computed on the source';
REVOKE ALL ON FUNCTION eds.reconcile_source_figures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.reconcile_source_figures() TO etl_reader;

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
	SELECT 'payments per month', eds.reconcile_month(payment_date) || ' count', count(*)
	  FROM warehouse.fact_payments GROUP BY 2
	UNION ALL
	SELECT 'payments per month', eds.reconcile_month(payment_date) || ' amount', sum(payment_amount)
	  FROM warehouse.fact_payments GROUP BY 2
	UNION ALL
	SELECT 'customer attributes', (customer_id % 256)::text,
		   eds.digest_bucket(string_agg(concat_ws('|', customer_id, full_name, email, phone, city, country, segment),
										',' ORDER BY customer_id))
	  FROM warehouse.dim_customer WHERE is_current AND NOT is_deleted GROUP BY customer_id % 256
	UNION ALL
	SELECT 'loan attributes', (d.loan_id % 256)::text,
		   eds.digest_bucket(string_agg(concat_ws('|', d.loan_id, d.customer_id, d.product_name, d.product_type,
												  d.amount, d.interest_rate, d.tenure_months, d.status,
												  f.outstanding_balance, d.branch_code, d.loan_officer,
												  extract(epoch FROM d.disbursed_at),
												  to_char(d.maturity_date, 'YYYY-MM-DD')),
										',' ORDER BY d.loan_id))
	  FROM warehouse.dim_loan d LEFT JOIN warehouse.fact_loans f USING (loan_id)
	 WHERE NOT d.is_deleted
	 GROUP BY d.loan_id % 256
	UNION ALL
	SELECT 'payment attributes', (f.payment_id % 256)::text,
		   eds.digest_bucket(string_agg(concat_ws('|', f.payment_id, f.loan_id, f.payment_amount, f.principal_portion,
												  f.interest_portion, f.penalty_portion, m.method_code,
												  extract(epoch FROM f.payment_date)),
										',' ORDER BY f.payment_id))
	  FROM warehouse.fact_payments f JOIN warehouse.dim_payment_method m USING (method_sk)
	 GROUP BY f.payment_id % 256
	UNION ALL
	SELECT 'fact_payments customers', 'payments keyed to another customer than their loan''s', count(*)
	  FROM warehouse.fact_payments f JOIN warehouse.dim_loan l USING (loan_id)
	 WHERE f.customer_id <> l.customer_id
	UNION ALL
	SELECT 'fact_payments keys', 'facts and eds.fact_payment_keys entries that do not match', count(*)
	  FROM warehouse.fact_payments f
	  FULL JOIN eds.fact_payment_keys k ON k.payment_id = f.payment_id AND k.payment_date = f.payment_date
	 WHERE f.payment_id IS NULL OR k.payment_id IS NULL
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

COMMENT ON FUNCTION eds_reconcile() IS
	'Compares source and warehouse (counts, sums, per-month payments, digests of every copied customer, loan and payment attribute, fact_loans totals, summaries); returns only the differences, so no rows means clean';

-- ===========================================================================
-- Continuous ETL: windows back to back, and how fresh the warehouse is
-- ===========================================================================

-- Continuous mode's wish, kept across restarts: the launcher reads it at
-- server start and starts the worker where it is on.  One row, always.
CREATE TABLE audit.etl_continuous (
	id			integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
	enabled		boolean NOT NULL DEFAULT false,
	every		interval NOT NULL DEFAULT '1 second'
		CHECK (every >= '100 milliseconds' AND every <= '1 hour'),
	run_as		name,
	started_at	timestamptz,
	stopped_at	timestamptz,
	CHECK (NOT enabled OR run_as IS NOT NULL)
);
INSERT INTO audit.etl_continuous DEFAULT VALUES;
COMMENT ON TABLE audit.etl_continuous IS
	'Continuous ETL mode (eds_start_continuous / eds_stop_continuous): whether it is on, the pause after an empty window, and the role its worker runs as';
COMMENT ON COLUMN audit.etl_continuous.every IS 'Pause after a window that found nothing to load (a window that loaded something is followed at once by the next)';
COMMENT ON COLUMN audit.etl_continuous.run_as IS 'The role that started continuous mode: the worker connects as it, so the source user mapping is that role''s';

-- Freshness: what a run's snapshot proves about the source's past.
ALTER TABLE audit.etl_state ADD COLUMN source_time timestamptz;
ALTER TABLE audit.etl_state ADD COLUMN checked_at timestamptz;
ALTER TABLE audit.etl_state ADD COLUMN pending_xmax xid8;
ALTER TABLE audit.etl_state ADD COLUMN pending_time timestamptz;
COMMENT ON COLUMN audit.etl_state.source_time IS
	'Every transaction committed on the source (its primary) before this time is in the warehouse: the source time of the newest snapshot whose changes are all applied';
COMMENT ON COLUMN audit.etl_state.checked_at IS
	'When the last run or continuous window ended (warehouse clock), whether or not it found changes';
COMMENT ON COLUMN audit.etl_state.pending_xmax IS
	'Internal: xmax of an earlier snapshot not yet covered by the watermark; once the watermark passes it, source_time moves to pending_time';
COMMENT ON COLUMN audit.etl_state.pending_time IS 'Internal: the source time of the snapshot of pending_xmax';

-- A continuous window is a run like any other; empty ones leave no row, and
-- a failure repeated while the source stays down is one row counting attempts.
ALTER TABLE audit.etl_runs ADD COLUMN origin text NOT NULL DEFAULT 'call'
	CHECK (origin IN ('call', 'continuous'));
ALTER TABLE audit.etl_runs ADD COLUMN attempts integer NOT NULL DEFAULT 1;
ALTER TABLE audit.etl_runs ADD COLUMN last_attempt_at timestamptz;
COMMENT ON COLUMN audit.etl_runs.origin IS
	'call: eds_run_etl() (by hand or pg_cron); continuous: a window of continuous mode (windows that found nothing are not recorded)';
COMMENT ON COLUMN audit.etl_runs.attempts IS
	'A failed continuous window retried with the same error is counted here instead of adding a row per attempt';
COMMENT ON COLUMN audit.etl_runs.last_attempt_at IS 'The latest of those attempts (NULL: only one)';

CREATE FUNCTION eds_start_continuous(every interval DEFAULT '1 second') RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_start_continuous';
COMMENT ON FUNCTION eds_start_continuous(interval) IS
	'Turns continuous ETL on for this warehouse database: a background worker runs windows back to back (each the same exact, atomic run as eds_run_etl()), pausing "every" after an empty one; kept across restarts';
REVOKE ALL ON FUNCTION eds_start_continuous(interval) FROM PUBLIC;

CREATE FUNCTION eds_stop_continuous() RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_stop_continuous';
COMMENT ON FUNCTION eds_stop_continuous() IS
	'Turns continuous ETL off: the window in progress finishes, no new one starts';
REVOKE ALL ON FUNCTION eds_stop_continuous() FROM PUBLIC;

-- For Metabase: how far behind the source the warehouse is.
CREATE VIEW warehouse.vw_etl_freshness AS
SELECT s.source_time AS loaded_through,
	   round(extract(epoch FROM now() - s.source_time)::numeric, 1) AS freshness_seconds,
	   s.checked_at AS last_checked_at,
	   c.enabled AS continuous,
	   c.every AS continuous_every,
	   (SELECT max(r.run_finished_at) FROM audit.etl_runs r WHERE r.status = 'success') AS last_load_at
  FROM audit.etl_continuous c
  LEFT JOIN audit.etl_state s ON true;
COMMENT ON VIEW warehouse.vw_etl_freshness IS
	'How fresh the warehouse is: everything committed on the source before loaded_through is loaded (freshness_seconds ago); whether continuous mode is on';
GRANT SELECT ON warehouse.vw_etl_freshness TO warehouse_reader;
GRANT SELECT ON audit.etl_state, audit.etl_continuous TO pg_monitor;

-- ===========================================================================
-- Health: a window that stands still while changes wait
-- ===========================================================================
-- eds_metrics() reads eds_health(): both are made again.
DROP FUNCTION eds_metrics();
DROP FUNCTION eds_health();
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
	-- in seconds whatever unit it was set in (current_setting() shows the unit)
	v_stall		numeric := coalesce((SELECT ps.setting::numeric FROM pg_settings ps WHERE ps.name = 'eds.etl_stall_warn'), 300);
	v_fresh_w	numeric := coalesce((SELECT ps.setting::numeric FROM pg_settings ps WHERE ps.name = 'eds.etl_freshness_warn'), 1200);
	v_fresh_c	numeric := coalesce((SELECT ps.setting::numeric FROM pg_settings ps WHERE ps.name = 'eds.etl_freshness_critical'), 3600);
	st			record;
	cm			record;
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
		SELECT * INTO st FROM audit.etl_state;
		SELECT * INTO cm FROM audit.etl_continuous;
		check_name := 'etl';
		IF r IS NULL THEN
			status := 'warn'; value := 'no run yet';
			message := 'The ETL source is declared but no run has finished: run SELECT eds_run_etl().';
		ELSE
			-- Continuous windows that found nothing leave no run row, only checked_at.
			v_ts := greatest(r.run_started_at, CASE WHEN r.status = 'success' THEN st.checked_at END);
			value := format('run %s %s, %s ago', r.run_id, r.status, date_trunc('second', now() - r.run_started_at));
			IF r.status = 'failed' THEN
				status := 'critical';
				message := 'The last ETL run failed: ' || coalesce(r.error_message, '?') ||
					CASE WHEN r.attempts > 1 THEN format(' (%s attempts, the last at %s)', r.attempts,
						date_trunc('second', r.last_attempt_at)) ELSE '' END || ' (see audit.etl_runs).';
			ELSIF now() - v_ts > make_interval(mins => v_etl_age::integer) THEN
				status := 'warn';
				message := format('The last successful run is older than eds.etl_max_age (%s min): is the schedule running?', v_etl_age);
			ELSE
				status := 'ok'; message := 'The last ETL run succeeded recently.';
			END IF;
		END IF;
		RETURN NEXT;

		-- The window ends at the oldest transaction open on the source: a
		-- forgotten one (an idle session, a prepared transaction) stops
		-- loading while every run still succeeds.
		SELECT * INTO r FROM audit.etl_runs er WHERE er.status = 'success' ORDER BY er.run_id DESC LIMIT 1;
		IF FOUND THEN
			check_name := 'etl window';
			SELECT min(er.run_finished_at) INTO v_ts FROM audit.etl_runs er
			 WHERE er.status = 'success' AND er.to_txid = r.to_txid;
			value := format('at source transaction %s since %s', r.to_txid, date_trunc('second', now() - v_ts));
			IF r.changes_waiting AND v_stall > 0 AND now() - v_ts > make_interval(secs => v_stall::double precision) THEN
				status := 'warn';
				message := format('The ETL window has not moved for %s while source changes wait (eds.etl_stall_warn is %s s): '
								  'it is held by %s. End that transaction (COMMIT, ROLLBACK, or COMMIT/ROLLBACK PREPARED).',
								  date_trunc('second', now() - v_ts), v_stall,
								  coalesce(r.window_held_by, 'a transaction open on the source (on a replica it cannot be named)'));
			ELSE
				status := 'ok';
				message := 'The ETL window moves with the source.';
			END IF;
			RETURN NEXT;
		END IF;

		-- Freshness: everything committed on the source before source_time is loaded.
		IF st.source_time IS NOT NULL THEN
			check_name := 'etl freshness';
			value := format('%s s behind the source', round(extract(epoch FROM now() - st.source_time)::numeric, 1));
			IF now() - st.source_time > make_interval(secs => v_fresh_c::double precision) THEN
				status := 'critical';
				message := format('The warehouse misses source changes older than eds.etl_freshness_critical (%s s): '
								  'check the ETL''s runs (audit.etl_runs) and its schedule or continuous mode.', v_fresh_c);
			ELSIF now() - st.source_time > make_interval(secs => v_fresh_w::double precision) THEN
				status := 'warn';
				message := format('The warehouse misses source changes older than eds.etl_freshness_warn (%s s).', v_fresh_w);
			ELSE
				status := 'ok';
				message := 'The warehouse holds every source change older than that.';
			END IF;
			RETURN NEXT;
		END IF;

		IF cm.enabled THEN
			check_name := 'etl continuous';
			SELECT a.pid INTO v_n FROM pg_stat_activity a
			 WHERE a.backend_type = 'eds continuous' AND a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
			IF v_n IS NULL THEN
				status := 'critical'; value := 'on, no worker';
				message := 'Continuous mode is on but its worker is not running: is eds in shared_preload_libraries? '
						   'See the server log; SELECT eds_start_continuous() starts it again.';
			ELSE
				status := 'ok'; value := format('on, every %s, worker pid %s', cm.every, v_n);
				message := 'Continuous mode runs ETL windows back to back.';
			END IF;
			RETURN NEXT;
		END IF;

		check_name := 'etl schedule';
		IF cm.enabled THEN
			status := 'ok'; value := 'continuous';
			message := 'Continuous mode loads the warehouse; a pg_cron job is not needed (its runs would wait for the window in progress).';
		ELSIF to_regclass('cron.job') IS NULL THEN
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
	'Health checks with status ok / warn / critical / unknown and what to do: role, lag sampling, each replica, slots, WAL archiving, the ETL, its window, its freshness, continuous mode and its schedule';
REVOKE ALL ON FUNCTION eds_health() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds_health() TO pg_monitor;

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
		UNION ALL SELECT 13, '# HELP eds_etl_freshness_seconds Seconds since the newest source time up to which every committed change is in the warehouse'
		UNION ALL SELECT 14, '# TYPE eds_etl_freshness_seconds gauge'
		UNION ALL
		SELECT 15, format('eds_etl_freshness_seconds %s', round(extract(epoch FROM now() - s.source_time)::numeric, 3))
		  FROM audit.etl_state s WHERE s.source_time IS NOT NULL
	) m;
END;
COMMENT ON FUNCTION eds_metrics() IS 'eds_health() and per-replica lag in Prometheus text format';
REVOKE ALL ON FUNCTION eds_metrics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds_metrics() TO pg_monitor;

-- ===========================================================================
-- Text the warehouse encoding cannot hold
-- ===========================================================================
CREATE FUNCTION eds.encodable_text(value text, target_encoding name) RETURNS text
	LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', 'eds_encodable_text';
COMMENT ON FUNCTION eds.encodable_text(text, name) IS
	'The value with each character that target_encoding cannot represent replaced by ?: the ETL extracts text this way when the warehouse encoding is narrower than the source''s';
REVOKE ALL ON FUNCTION eds.encodable_text(text, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.encodable_text(text, name) TO etl_reader;

-- Rows whose text was loaded with replacements say so in audit.etl_rejects.
ALTER TABLE staging.stg_customers ADD COLUMN lossy boolean NOT NULL DEFAULT false;
ALTER TABLE staging.stg_loans ADD COLUMN lossy boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN audit.etl_rejects.reason IS
	'Why the row was not loaded, or (for text the warehouse encoding cannot hold) how it was loaded';

-- Staged rows whose text came with replacements: recorded once per row
-- version, so a customer staged by many runs is not reported by each.
CREATE FUNCTION eds.record_lossy_rows(p_run_id bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $lossy$
DECLARE
	v_reason text := format('loaded with ? for characters the warehouse encoding (%s) cannot hold',
							pg_catalog.getdatabaseencoding());
	n1 bigint;
	n2 bigint;
BEGIN
	INSERT INTO audit.etl_rejects (run_id, table_name, source_key, reason, row_data)
	SELECT p_run_id, 'customers', s.customer_id, v_reason, x.row_data
	  FROM staging.stg_customers s,
		   LATERAL (SELECT to_jsonb(s) - 'is_deleted' - 'touched' - 'lossy' AS row_data) x
	 WHERE s.lossy AND NOT s.is_deleted
	   AND NOT EXISTS (SELECT FROM audit.etl_rejects r
					    WHERE r.table_name = 'customers' AND r.source_key = s.customer_id
						  AND r.reason = v_reason AND r.row_data = x.row_data);
	GET DIAGNOSTICS n1 = ROW_COUNT;
	INSERT INTO audit.etl_rejects (run_id, table_name, source_key, reason, row_data)
	SELECT p_run_id, 'loans', s.loan_id, v_reason, x.row_data
	  FROM staging.stg_loans s,
		   LATERAL (SELECT to_jsonb(s) - 'is_deleted' - 'touched' - 'lossy' AS row_data) x
	 WHERE s.lossy AND NOT s.is_deleted
	   AND NOT EXISTS (SELECT FROM audit.etl_rejects r
					    WHERE r.table_name = 'loans' AND r.source_key = s.loan_id
						  AND r.reason = v_reason AND r.row_data = x.row_data);
	GET DIAGNOSTICS n2 = ROW_COUNT;
	RETURN n1 + n2;
END
$lossy$;
COMMENT ON FUNCTION eds.record_lossy_rows(bigint) IS
	'ETL merge step: records in audit.etl_rejects the staged customers and loans whose text was loaded with replacement characters';
REVOKE ALL ON FUNCTION eds.record_lossy_rows(bigint) FROM PUBLIC;

-- ===========================================================================
-- A warehouse that reads a replica is a consumer of its primary
-- ===========================================================================
CREATE FUNCTION eds_set_source_primary(conninfo text) RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eds_set_source_primary';
COMMENT ON FUNCTION eds_set_source_primary(text) IS
	'Declares the primary behind a replica ETL source (foreign server eds_source_primary): runs from the replica register and acknowledge there, so the primary never purges changes this warehouse has not loaded';
REVOKE ALL ON FUNCTION eds_set_source_primary(text) FROM PUBLIC;

-- Whether the source knows a consumer (the ETL asks a replica before
-- reading it); the consumers themselves stay hidden from etl_reader.
CREATE FUNCTION eds.etl_is_consumer(p_consumer text) RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT FROM eds.etl_consumers c WHERE c.consumer = p_consumer);
COMMENT ON FUNCTION eds.etl_is_consumer(text) IS
	'Whether this source (or the primary it replicates) records the given warehouse as a consumer of its change log';
REVOKE ALL ON FUNCTION eds.etl_is_consumer(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eds.etl_is_consumer(text) TO etl_reader;

