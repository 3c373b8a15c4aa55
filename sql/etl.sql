-- The ETL end to end on one server: this database is both the source
-- (operational.*) and the warehouse (warehouse.*), as eds allows.

-- eds_run_etl() returns once its run has committed; the worker then tells
-- the source (which purges its change log) and prunes old history.  Checks
-- of that housekeeping wait for the worker to finish it (then it waits idle
-- for the next run).
CREATE FUNCTION pg_temp.wait_for_housekeeping() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	FOR i IN 1..400 LOOP
		IF NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds etl' AND state <> 'idle') THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.05);
		PERFORM pg_stat_clear_snapshot();	-- pg_stat_activity is read once per transaction
	END LOOP;
	RETURN false;
END
$$;

-- Nothing declared yet: a clear error, and the failure is recorded.
SELECT status FROM eds_run_etl();
SELECT run_id, status, error_message FROM audit.etl_runs ORDER BY run_id;

-- Bad declarations are refused and change nothing.
SELECT eds_set_source(NULL);
SELECT eds_set_source('host=');
SELECT eds_set_source('not a conninfo');
SELECT eds_set_source('dbname=x options=''-c search_path=evil''');
SELECT eds_set_source('dbname=x replication=database');
SELECT count(*) AS servers FROM pg_foreign_server WHERE srvname = 'eds_source';

-- An unreachable source: the run fails, names the server, and says what to check.
SELECT eds_set_source('host=127.0.0.1 port=1 dbname=nowhere');
SELECT status FROM eds_run_etl();
SELECT status, error_message, error_detail IS NOT NULL AS has_detail
  FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1;

-- The password lives in the user mapping, not in the server's options.
SELECT eds_set_source('host=127.0.0.1 port=1 dbname=nowhere user=etl password=s3cret');
SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'eds_source';
SELECT umoptions FROM pg_user_mappings WHERE srvname = 'eds_source';

-- Point the source at this database.
SELECT eds_set_source(format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'), current_database())) IS NOT NULL AS declared;
SELECT * FROM eds_generate_demo_data(30, 40, 200, 5);

-- First load: everything, then an incremental run finds nothing to do.
SELECT status, mode, rows_read, rows_inserted, rows_updated, rows_deleted, rows_rejected,
	   to_txid IS NOT NULL AS has_watermark, source_lsn IS NOT NULL AS has_lsn
  FROM eds_run_etl();
SELECT * FROM eds_reconcile();
SELECT status, mode, rows_read FROM eds_run_etl();
SELECT count(*) AS dim_dates, min(full_date), max(full_date) FROM warehouse.dim_date;
SELECT count(*) FILTER (WHERE is_current) AS current_customers, count(*) AS versions FROM warehouse.dim_customer;
SELECT count(*) AS payment_facts, sum(payment_amount) FROM warehouse.fact_payments;
SELECT (SELECT count(*) FROM operational.payments) AS source_payments,
	   (SELECT sum(amount) FROM operational.payments) AS source_amount;

-- Changes of every kind.  The customer who moves has paid before.
SELECT l.customer_id AS mover FROM operational.payments p JOIN operational.loans l USING (loan_id)
 WHERE p.payment_id = 1 \gset
UPDATE operational.customers SET city = 'Kisumu' WHERE customer_id = :mover;  -- SCD2: new version
UPDATE operational.customers SET email = 'fixed@x.ke' WHERE customer_id = 2; -- type 1: corrected in place
UPDATE operational.customers SET segment = 'sme', city = 'Nyeri' WHERE customer_id = 3;
DELETE FROM operational.payments WHERE payment_id = 10;
UPDATE operational.payments SET payment_method = 'online' WHERE payment_id = 11;
INSERT INTO operational.customers (full_name, email, segment, city) VALUES ('Baraka Imani', 'baraka@x.ke', 'retail', 'Meru');
INSERT INTO operational.loans (customer_id, product_id, amount, interest_rate, tenure_months, status, outstanding_balance, disbursed_at)
SELECT customer_id, (SELECT min(product_id) FROM operational.loan_products), 50000, 14, 12, 'active', 50000, now()
  FROM operational.customers WHERE email = 'baraka@x.ke';
SELECT principal_portion, outstanding_balance
  FROM operational.post_payment((SELECT loan_id FROM operational.loans l JOIN operational.customers c USING (customer_id)
								 WHERE c.email = 'baraka@x.ke'), 5583.33, 'mpesa');
-- A payment the warehouse cannot take (before its calendar): rejected, not lost.
INSERT INTO operational.payments (loan_id, amount, principal_portion, interest_portion, payment_method, payment_date)
VALUES (1, 10, 10, 0, 'cash', '2017-06-30');

SELECT status, mode, rows_read, rows_inserted, rows_updated, rows_deleted, rows_rejected FROM eds_run_etl();
SELECT table_counts FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1;

-- History: the old city is kept; payments before the move keep it.
SELECT customer_id = :mover AS is_mover, version_no, city, segment, email, is_current,
	   effective_to = 'infinity' AS open_ended
  FROM warehouse.dim_customer WHERE customer_id IN (:mover, 2, 3) ORDER BY customer_id, version_no;
SELECT count(*) FILTER (WHERE d.version_no = 1) AS facts_on_old_version,
	   count(*) FILTER (WHERE d.version_no = 2) AS facts_on_new_version
  FROM warehouse.fact_payments f JOIN warehouse.dim_customer d USING (customer_sk)
 WHERE d.customer_id = :mover;
-- A payment dated after the move belongs to the new version.
SELECT payment_id AS late_payment
  FROM operational.post_payment((SELECT loan_id FROM operational.loans WHERE customer_id = :mover
								  AND status = 'active' ORDER BY loan_id LIMIT 1), 1, 'cash') \gset
SELECT status, rows_inserted FROM eds_run_etl();
SELECT d.version_no FROM warehouse.fact_payments f JOIN warehouse.dim_customer d USING (customer_sk)
 WHERE f.payment_id = :late_payment;
SELECT count(*) AS versions_overlapping
  FROM warehouse.dim_customer a JOIN warehouse.dim_customer b
	ON a.customer_id = b.customer_id AND a.customer_sk < b.customer_sk
   AND a.effective_from < b.effective_to AND b.effective_from < a.effective_to;
SELECT m.method_code FROM warehouse.fact_payments f JOIN warehouse.dim_payment_method m USING (method_sk)
 WHERE f.payment_id = 11;
SELECT count(*) AS deleted_payment_facts FROM warehouse.fact_payments WHERE payment_id = 10;
SELECT table_name, reason, row_data->>'payment_date' AS payment_date FROM audit.etl_rejects;

-- Reconcile compares what the warehouse rules accept: the rejected payment
-- is in audit.etl_rejects, and reconcile is clean.
SELECT * FROM eds_reconcile();

-- Fix it on the source: the next run loads it.
UPDATE operational.payments SET payment_date = '2023-06-30' WHERE payment_date = '2017-06-30';
SELECT status, rows_read, rows_inserted, rows_rejected FROM eds_run_etl();
SELECT * FROM eds_reconcile();

-- A deleted customer keeps its history; its last version records the deletion.
INSERT INTO operational.customers (full_name, email, segment) VALUES ('Short Lived', 'short@x.ke', 'retail');
SELECT status, rows_inserted FROM eds_run_etl();
DELETE FROM operational.customers WHERE email = 'short@x.ke';
SELECT status, rows_deleted FROM eds_run_etl();
SELECT version_no, is_current, is_deleted FROM warehouse.dim_customer
 WHERE customer_id = (SELECT max(customer_id) FROM warehouse.dim_customer) ORDER BY version_no;
SELECT * FROM eds_reconcile();

-- A loan handed to another customer takes its payments along.
SELECT l.loan_id AS moved_loan, (SELECT min(c.customer_id) FROM operational.customers c
								   WHERE c.customer_id <> l.customer_id) AS new_owner
  FROM operational.loans l WHERE EXISTS (SELECT FROM operational.payments p WHERE p.loan_id = l.loan_id)
 ORDER BY l.loan_id LIMIT 1 \gset
UPDATE operational.loans SET customer_id = :new_owner WHERE loan_id = :moved_loan;
SELECT status FROM eds_run_etl();
SELECT count(*) FILTER (WHERE customer_id = :new_owner) = count(*) AS payments_follow_the_loan
  FROM warehouse.fact_payments WHERE loan_id = :moved_loan;
SELECT * FROM eds_reconcile();

-- Inside a REPEATABLE READ transaction the result could not be seen: refused.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT status FROM eds_run_etl();
ROLLBACK;

-- A failure's hint reaches the caller and the run row.
CREATE TEMP TABLE saved_state AS SELECT * FROM audit.etl_state;
DELETE FROM audit.etl_state;
SELECT status FROM eds_run_etl();
SELECT error_detail FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1;
INSERT INTO audit.etl_state SELECT * FROM saved_state;

-- A run left 'running' by a crash is marked failed by the next run.
INSERT INTO audit.etl_runs (status) VALUES ('running');
SELECT status FROM eds_run_etl();
SELECT count(*) AS still_running FROM audit.etl_runs WHERE status = 'running';
SELECT error_message FROM audit.etl_runs WHERE error_message LIKE 'interrupted%';

-- One run at a time: while the ETL lock is held, a run is skipped.
SELECT pg_advisory_lock(6579315, 1);
SELECT status FROM eds_run_etl();
SELECT note FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1;
SELECT pg_advisory_unlock(6579315, 1);

-- History older than eds.etl_run_retention (90 days) is pruned by the next run.
INSERT INTO audit.etl_runs (status, run_started_at, run_finished_at, note)
VALUES ('success', now() - interval '100 days', now() - interval '100 days', 'old run');
SELECT status FROM eds_run_etl();
SELECT pg_temp.wait_for_housekeeping();
SELECT count(*) AS old_runs_left FROM audit.etl_runs WHERE note = 'old run';

-- Nothing is running now.
SELECT count(*) AS in_progress FROM audit.etl_progress;

-- The source knows who extracted, up to where, and purged its change log.
SELECT pg_temp.wait_for_housekeeping();
SELECT extracted_by, last_run_id IS NOT NULL AS has_run, watermark = (SELECT watermark FROM audit.etl_state) AS same_watermark
  FROM eds.etl_consumers;
SELECT count(*) AS change_log_left FROM eds.change_log;

-- Scheduling needs pg_cron in this database (here it is not).
SELECT eds_schedule_etl();
SELECT eds_schedule_etl('');
SELECT eds_unschedule_etl();

-- Privileges: Metabase's role sees the star schema and run history only.
SELECT t.obj, has_table_privilege('warehouse_reader', t.obj, 'SELECT') AS can_select
  FROM (VALUES ('warehouse.dim_customer'), ('warehouse.fact_payments'), ('warehouse.vw_monthly_revenue'),
			   ('warehouse.vw_branch_collections'), ('audit.etl_runs'), ('audit.etl_rejects'),
			   ('audit.etl_state'), ('operational.customers'), ('eds.change_log')) AS t(obj);
SELECT has_schema_privilege('warehouse_reader', 'staging', 'USAGE') AS staging_usage,
	   has_function_privilege('warehouse_reader', 'eds_run_etl()', 'EXECUTE') AS run_etl,
	   has_function_privilege('warehouse_reader', 'eds_set_source(text)', 'EXECUTE') AS set_source,
	   has_function_privilege('warehouse_reader', 'eds_reconcile()', 'EXECUTE') AS reconcile;
SELECT has_table_privilege('warehouse_reader', 'warehouse.fact_payments', 'INSERT') AS can_insert;

-- Clean up for later files.
DROP SERVER eds_source CASCADE;
TRUNCATE warehouse.fact_payments, eds.fact_payment_keys, warehouse.fact_loans, warehouse.dim_loan, warehouse.dim_customer,
	audit.etl_state, audit.etl_runs, audit.etl_rejects, eds.etl_consumers, eds.change_log,
	eds.change_log_horizon, operational.payments, operational.loans, operational.customers,
	operational.loan_products, operational.audit_log, eds.payments_by_month, eds.customer_payment_totals;
-- The truncate of the operational tables was itself captured.
TRUNCATE eds.change_log;
