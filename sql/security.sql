-- Hostile objects in public cannot capture eds's calls, and bad input to
-- any eds function is a clean error that changes nothing.

-- ---------------------------------------------------------------- capture
CREATE FUNCTION public.round(numeric, integer) RETURNS numeric
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'captured: public.round'; END $$;
CREATE FUNCTION public.now() RETURNS timestamptz
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'captured: public.now'; END $$;
CREATE FUNCTION public.hostile_plus(numeric, numeric) RETURNS numeric
	LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'captured: public.+'; END $$;
CREATE OPERATOR public.+ (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = public.hostile_plus);
SET search_path = public, pg_catalog;
-- The trap is armed: an unpinned caller does fall into it.
SELECT round(1.5, 0);
SELECT 1.0 + 2.0;

-- eds's functions do not.
SELECT * FROM eds_generate_demo_data(10, 10, 40, 3);
SELECT payment_id IS NOT NULL AS posted
  FROM operational.post_payment((SELECT loan_id FROM operational.loans WHERE status = 'active'
								  ORDER BY outstanding_balance DESC LIMIT 1), 5000, 'mpesa');
SELECT eds_set_source(format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'),
							 current_setting('port'), current_database())) IS NOT NULL AS declared;
SELECT status, mode FROM eds_run_etl();
SELECT count(*) AS differences FROM eds_reconcile();
SELECT count(*) > 0 AS health_answers FROM eds_health();
SELECT eds_metrics() LIKE '# HELP%' AS metrics_answer;
RESET search_path;
DROP OPERATOR public.+ (numeric, numeric);
DROP FUNCTION public.hostile_plus(numeric, numeric), public.round(numeric, integer), public.now();

-- ---------------------------------------------------------------- bad input
SELECT count(*) AS loans_before FROM operational.loans \gset
SELECT eds_set_source('');
SELECT eds_set_source('   ');
SELECT eds_set_source('host=x port=notaport dbname=y');
SELECT eds_set_source('host=x dbname=''a'''';DROP TABLE operational.loans;--''');
SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'eds_source';
SELECT count(*) = :loans_before AS loans_intact FROM operational.loans;
SELECT eds_set_source('dbname=x options=''-c log_statement=all''');
SELECT eds_set_source('dbname=x sslmode=bogus');
SELECT length(eds_set_source('dbname=' || repeat('a', 100000))) AS accepted_length;
SELECT eds_set_source(42);
SELECT eds_schedule_etl(NULL);
SELECT eds_generate_demo_data('many');
SELECT eds_generate_demo_data(-1, -1, -1, -1);
SELECT eds_generate_demo_data(2147483647, 2147483647, 2147483647);
SELECT * FROM operational.post_payment(-1, 1, 'cash');
SELECT min(loan_id) AS active_loan FROM operational.loans WHERE status = 'active' \gset
SELECT * FROM operational.post_payment(:active_loan, 'NaN', 'cash');
SELECT * FROM operational.post_payment(:active_loan, 'Infinity', 'cash');
SELECT * FROM operational.post_payment(:active_loan, 1, 'cash', p_penalty => 'NaN');
SELECT * FROM operational.post_payment(:active_loan, 99999999999999999999, 'cash');
SELECT * FROM operational.post_payment(1, 1, 'cash'';DROP TABLE operational.loans;--');
SELECT count(*) = :loans_before AS loans_intact FROM operational.loans;
SET eds.actor = 'robert''); DROP TABLE operational.audit_log;--';
UPDATE operational.loans SET branch_code = branch_code WHERE loan_id = (SELECT min(loan_id) FROM operational.loans);
SELECT actor FROM operational.audit_log ORDER BY log_id DESC LIMIT 1;
RESET eds.actor;
SELECT count(*) > 0 AS audit_log_intact FROM operational.audit_log;

-- A non-superuser may not make the server connect without a password
-- (the dblink / postgres_fdw rule), even when granted the function.
SELECT eds_set_source(format('host=%s port=%s dbname=%s', current_setting('unix_socket_directories'),
							 current_setting('port'), current_database())) IS NOT NULL AS declared;
CREATE ROLE borrower LOGIN;
GRANT EXECUTE ON FUNCTION eds_reconcile() TO borrower;
GRANT USAGE ON FOREIGN SERVER eds_source TO borrower;
CREATE USER MAPPING FOR borrower SERVER eds_source;
SET SESSION AUTHORIZATION borrower;
SELECT * FROM eds_reconcile();
RESET SESSION AUTHORIZATION;
ALTER USER MAPPING FOR borrower SERVER eds_source OPTIONS (ADD password 'not-asked-for');
SET SESSION AUTHORIZATION borrower;
SELECT * FROM eds_reconcile();
RESET SESSION AUTHORIZATION;
DROP USER MAPPING FOR borrower SERVER eds_source;
REVOKE ALL ON FOREIGN SERVER eds_source FROM borrower;
REVOKE ALL ON FUNCTION eds_reconcile() FROM borrower;
DROP ROLE borrower;

-- Settings read at reload cannot be changed in a session, and typos are refused.
SET eds.lag_sample_interval = 0;
SET eds.no_such_setting = 1;

DROP SERVER eds_source CASCADE;
TRUNCATE warehouse.fact_payments, eds.fact_payment_keys, warehouse.fact_loans, warehouse.dim_loan, warehouse.dim_customer,
	warehouse.replication_lag_history, audit.etl_state, audit.etl_runs, audit.etl_rejects,
	eds.etl_consumers, eds.change_log, eds.change_log_horizon, operational.payments, operational.loans,
	operational.customers, operational.loan_products, operational.audit_log, eds.payments_by_month,
	eds.customer_payment_totals;
-- The truncate of the operational tables was itself captured.
TRUNCATE eds.change_log;
