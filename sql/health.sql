-- eds_health() and eds_metrics(): shape, thresholds and messages.
-- The test server has no replicas and archive_mode off.

SELECT check_name, status, value FROM eds_health();

-- Lag samples as the worker would write them (defaults: warn at 16 MB or
-- 60 s of heartbeat lag, critical at 1 GB or 300 s).
INSERT INTO eds.replication_lag_history (sampled_at, replica, status, slot_name, replay_lag_bytes, heartbeat_lag,
	slot_active, slot_retained_bytes, slot_wal_status)
VALUES (now(), 'caught_up', 'streaming', 'caught_up_slot', 0, '1 second', true, 0, 'reserved'),
	   (now(), 'busy', 'streaming', NULL, 20 * 1024 * 1024, '5 seconds', NULL, NULL, NULL),
	   (now(), 'slow', 'streaming', NULL, 4096, '2 minutes', NULL, NULL, NULL),
	   (now(), 'stalled', 'streaming', NULL, 4096, '10 minutes', NULL, NULL, NULL),
	   (now(), 'far', 'streaming', NULL, 2147483648, '1 second', NULL, NULL, NULL),
	   (now(), 'starting', 'catchup', NULL, 4096, '1 second', NULL, NULL, NULL),
	   (now(), 'gone', 'missing', 'gone_slot', NULL, NULL, false, 50 * 1024 * 1024, 'extended');
SELECT check_name, status, value, message FROM eds_health() WHERE check_name LIKE 'replica %' ORDER BY 1;

-- An old sample does not count as the current state.
INSERT INTO eds.replication_lag_history (sampled_at, replica, status, replay_lag_bytes, heartbeat_lag)
VALUES (now() - interval '1 hour', 'caught_up', 'missing', NULL, NULL);
SELECT status FROM eds_health() WHERE check_name = 'replica caught_up';

-- Prometheus text: one gauge per check and per replica.
SELECT line FROM regexp_split_to_table(eds_metrics(), E'\n') AS line
 WHERE line LIKE 'eds_replica_up%' OR line LIKE 'eds_health_status{check="wal%' OR line LIKE '# TYPE%'
 ORDER BY line;

-- On this primary, sampling works from SQL too (no replicas: no rows) and
-- writes a heartbeat.
SELECT eds_sample_replication_lag() AS replicas_sampled;
SELECT count(*) > 0 AS has_heartbeat FROM eds.heartbeat;

-- pg_monitor is enough to read the health checks.
CREATE ROLE health_watcher LOGIN IN ROLE pg_monitor;
SET SESSION AUTHORIZATION health_watcher;
SELECT count(*) > 0 AS can_check FROM eds_health();
SELECT eds_metrics() LIKE '# HELP%' AS can_scrape;
SELECT eds_sample_replication_lag();
RESET SESSION AUTHORIZATION;
DROP ROLE health_watcher;

-- Where this database is a warehouse: the ETL and its schedule.
CREATE SERVER eds_source FOREIGN DATA WRAPPER eds_fdw OPTIONS (dbname 'nowhere');
SELECT check_name, status, value, message FROM eds_health() WHERE check_name LIKE 'etl%' ORDER BY 1;
INSERT INTO audit.etl_runs (status, run_finished_at, error_message)
VALUES ('success', now(), NULL), ('failed', now(), 'could not connect to the ETL source (dbname=nowhere)');
SELECT check_name, status, message FROM eds_health() WHERE check_name = 'etl';
UPDATE audit.etl_runs SET status = 'success', error_message = NULL, run_started_at = now() - interval '2 hours';
SELECT check_name, status, message FROM eds_health() WHERE check_name = 'etl';
UPDATE audit.etl_runs SET run_started_at = now();
SELECT check_name, status, message FROM eds_health() WHERE check_name = 'etl';
DROP SERVER eds_source;
TRUNCATE audit.etl_runs;

-- Pruning keeps eds.lag_retention days (7).
INSERT INTO eds.replication_lag_history (sampled_at, replica, status) VALUES (now() - interval '8 days', 'ancient', 'missing');
SELECT eds.prune_lag_history() >= 1 AS pruned;
SELECT count(*) AS ancient_left FROM eds.replication_lag_history WHERE replica = 'ancient';

TRUNCATE eds.replication_lag_history, eds.heartbeat;
