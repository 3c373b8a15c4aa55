-- The cards of the Metabase dashboard "eds — loan portfolio", one native SQL
-- query each, run as warehouse_user (member of warehouse_reader) on
-- warehouse_db. The single source of truth for docker/metabase/provision.sh
-- (which creates the cards) and for t/006_jdbc.pl (which runs each query over
-- JDBC as a warehouse_reader member and expects rows).
--
-- Format: "-- card: <name>" starts a card, "-- display: <type>" (Metabase
-- visualization: scalar, line, bar, pie, table) is optional, other "--" lines
-- are comments, the rest up to the next card is one statement.

-- card: Total loans
-- display: scalar
SELECT count(*) AS total_loans
  FROM warehouse.fact_loans;

-- card: Total revenue
-- display: scalar
SELECT sum(payment_amount) AS total_revenue
  FROM warehouse.fact_payments;

-- card: Monthly revenue
-- display: line
SELECT make_date(year, month, 1) AS month, total_revenue, principal_collected,
       interest_collected, penalty_collected, payment_count
  FROM warehouse.vw_monthly_revenue
 ORDER BY year, month;

-- card: Top customers
-- display: table
SELECT customer_id, full_name, segment, city, total_paid, payment_count,
       loan_count, last_payment_date
  FROM warehouse.vw_top_customers
 ORDER BY total_paid DESC, customer_id
 LIMIT 10;

-- card: Loan status distribution
-- display: pie
SELECT loan_status, loan_count
  FROM warehouse.vw_loan_status_distribution
 ORDER BY loan_count DESC, loan_status;

-- card: Payment methods
-- display: bar
SELECT method_name, total_amount, payment_count, share_of_amount
  FROM warehouse.vw_payment_by_method
 ORDER BY total_amount DESC, method_name;

-- card: Replication lag per minute
-- display: line
SELECT minute, replica, max_replay_lag_bytes, max_heartbeat_lag_seconds,
       missing_samples
  FROM warehouse.vw_replication_lag_per_minute
 ORDER BY minute, replica;

-- card: ETL run history
-- display: table
SELECT run_id, run_started_at, status, rows_read, rows_inserted, rows_updated,
       rows_deleted
  FROM audit.etl_runs
 ORDER BY run_id DESC
 LIMIT 50;
