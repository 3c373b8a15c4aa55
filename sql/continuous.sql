-- Continuous ETL on one server (this database is source and warehouse):
-- what is refused, a window that loads a change by itself, a call while it
-- runs, the stop.  Restarts, outages and crashes are in t/010_continuous.pl.

-- Polls until a condition holds (pg_stat_activity and the tables are read
-- afresh each time); false after 30 s.
CREATE FUNCTION pg_temp.wait_until(condition text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	ok boolean;
BEGIN
	FOR i IN 1..600 LOOP
		PERFORM pg_stat_clear_snapshot();
		EXECUTE 'SELECT ' || condition INTO ok;
		IF ok THEN
			RETURN true;
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RETURN false;
END
$$;

-- Nothing declared: refused, and nothing changes.
SELECT eds_start_continuous();
SELECT enabled, run_as FROM audit.etl_continuous;

SELECT eds_set_source(format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'), current_database())) IS NOT NULL AS declared;
SELECT count(*) > 0 AS generated FROM eds_generate_demo_data(20, 30, 100, 9);

-- Pauses out of range are refused.
SELECT eds_start_continuous('0');
SELECT eds_start_continuous('50 milliseconds');
SELECT eds_start_continuous('2 hours');
SELECT eds_start_continuous('1 day');
SELECT enabled FROM audit.etl_continuous;

-- Who may: not Metabase's role; it reads the freshness view.
SELECT has_function_privilege('warehouse_reader', 'eds_start_continuous(interval)', 'EXECUTE') AS can_start,
	   has_function_privilege('warehouse_reader', 'eds_stop_continuous()', 'EXECUTE') AS can_stop,
	   has_table_privilege('warehouse_reader', 'warehouse.vw_etl_freshness', 'SELECT') AS reads_freshness,
	   has_table_privilege('warehouse_reader', 'audit.etl_continuous', 'UPDATE') AS can_write_control;

-- A start inside a transaction that rolls back starts nothing.
BEGIN;
SELECT eds_start_continuous('200 milliseconds');
ROLLBACK;
SELECT pg_sleep(1);
SELECT enabled, count(a.pid) AS workers
  FROM audit.etl_continuous LEFT JOIN pg_stat_activity a ON a.backend_type = 'eds continuous'
 GROUP BY enabled;

-- On: the first window is the first load, by itself.
SELECT eds_start_continuous('200 milliseconds');
SELECT enabled, every, run_as = current_user AS run_as_me, started_at IS NOT NULL AS started FROM audit.etl_continuous;
SELECT pg_temp.wait_until($$EXISTS (SELECT FROM audit.etl_runs WHERE origin = 'continuous' AND mode = 'full' AND status = 'success')$$) AS first_load_by_a_window;
SELECT (SELECT count(*) FROM warehouse.fact_payments) = (SELECT count(*) FROM operational.payments) AS all_payments_loaded;

-- A payment posted now reaches the warehouse with no call.
SELECT count(*) AS posted FROM operational.post_payment(
	(SELECT min(loan_id) FROM operational.loans WHERE status = 'active' AND outstanding_balance > 10), 5, 'mpesa');
SELECT pg_temp.wait_until($$(SELECT count(*) FROM warehouse.fact_payments) = (SELECT count(*) FROM operational.payments)$$) AS payment_arrived;

-- Empty windows leave no run row; they move checked_at.
SELECT checked_at AS checked_before FROM audit.etl_state \gset
SELECT max(run_id) AS last_run_before FROM audit.etl_runs \gset
SELECT pg_temp.wait_until(format('(SELECT checked_at > %L FROM audit.etl_state)', :'checked_before')) AS checked_again;
SELECT count(*) AS rows_added_by_empty_windows FROM audit.etl_runs WHERE run_id > :last_run_before;

-- Freshness: seconds, not minutes, and seen by the view, the health check and the gauge.
SELECT freshness_seconds < 30 AS fresh, continuous, continuous_every FROM warehouse.vw_etl_freshness;
SELECT check_name, status FROM eds_health() WHERE check_name IN ('etl', 'etl freshness', 'etl continuous', 'etl schedule') ORDER BY 1;
SELECT count(*) AS gauges FROM regexp_split_to_table(eds_metrics(), E'\n') AS line WHERE line ~ '^eds_etl_freshness_seconds [0-9.]+$';

-- A call while continuous mode runs: it waits for the window in progress, then runs.
SELECT status, mode FROM eds_run_etl();
SELECT origin, status FROM audit.etl_runs ORDER BY run_id DESC LIMIT 1;

-- Off: the worker ends; a second stop says so.
SELECT eds_stop_continuous();
SELECT pg_temp.wait_until($$NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'eds continuous')$$) AS worker_gone;
SELECT enabled, stopped_at IS NOT NULL AS stopped FROM audit.etl_continuous;
SELECT eds_stop_continuous();
SELECT check_name FROM eds_health() WHERE check_name = 'etl continuous';
SELECT count(*) AS differences FROM eds_reconcile();

-- Clean up for later files.
DROP SERVER eds_source CASCADE;
TRUNCATE warehouse.fact_payments, eds.fact_payment_keys, warehouse.fact_loans, warehouse.dim_loan, warehouse.dim_customer,
	audit.etl_state, audit.etl_runs, audit.etl_rejects, eds.etl_consumers, eds.change_log,
	eds.change_log_horizon, operational.payments, operational.loans, operational.customers,
	operational.loan_products, operational.audit_log, eds.payments_by_month, eds.customer_payment_totals;
TRUNCATE eds.change_log;
UPDATE audit.etl_continuous SET started_at = NULL, stopped_at = NULL, run_as = NULL;
