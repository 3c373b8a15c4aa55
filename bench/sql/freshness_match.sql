-- bench/sql/freshness_match.sql: how long each payment took to reach the
-- warehouse in continuous ETL mode (bench/run --only freshness).
--
-- Run in the eds warehouse database after the writes stopped and continuous
-- mode caught up, with
--   public.bench_fresh_payments (payment_id, txid, committed_at): every payment
--       the pgbench run inserted, its inserting transaction's id as a 64-bit
--       number (xmin::text::bigint: the bench cluster is fresh, epoch 0) and
--       its commit time on the source (pg_xact_commit_timestamp(xmin));
--   public.bench_fresh_samples (sampled_at, source_time, last_run): once a
--       second during the run, audit.etl_state.source_time and the newest
--       successful run, read in one statement.
-- and psql variables first_run (the first load's run_id) and tolerance_ms
-- (see promise_broken below).
--
-- A payment belongs to the run whose window holds its transaction id,
-- from_txid <= txid < to_txid: that run's commit made it visible, so its
-- latency is run_finished_at (just before that commit) - committed_at.
-- Prints "name value" lines; the counts of errors must all be 0.
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset fieldsep ' '

CREATE TEMP TABLE fresh_runs AS
	SELECT run_id, coalesce(from_txid::text::bigint, 0) AS lo, to_txid::text::bigint AS hi,
	       run_started_at, run_finished_at, rows_read
	  FROM audit.etl_runs
	 WHERE status = 'success' AND to_txid IS NOT NULL;
CREATE INDEX ON fresh_runs (lo);
ANALYZE fresh_runs;

-- Each payment with the run of the last window starting at or below its txid.
CREATE TEMP TABLE fresh_match AS
	SELECT p.payment_id, p.txid, p.committed_at, r.run_id,
	       (r.run_id IS NOT NULL AND p.txid < r.hi) AS matched,
	       1000 * extract(epoch FROM r.run_finished_at - p.committed_at) AS latency_ms
	  FROM public.bench_fresh_payments p
	  LEFT JOIN LATERAL (SELECT run_id, hi, run_finished_at FROM fresh_runs
	                      WHERE lo <= p.txid ORDER BY lo DESC LIMIT 1) r ON true;
ANALYZE fresh_match;

SELECT 'inserted', count(*) FROM public.bench_fresh_payments;
SELECT 'no_commit_time', count(*) FROM public.bench_fresh_payments WHERE committed_at IS NULL;
SELECT 'matched', count(*) FROM fresh_match WHERE matched;
SELECT 'unmatched', count(*) FROM fresh_match WHERE NOT matched;
-- Loaded by the first load, which ran before the writes: impossible.
SELECT 'in_first_load', count(*) FROM fresh_match WHERE matched AND run_id <= :first_run;
-- Visible in the warehouse before the source committed it: impossible.
SELECT 'negative_latency', count(*) FROM fresh_match WHERE matched AND latency_ms < 0;
-- Windows are disjoint by design; overlapping ones would apply a key twice.
SELECT 'overlapping_windows', count(*)
  FROM fresh_runs a JOIN fresh_runs b ON a.run_id < b.run_id AND a.lo < b.hi AND b.lo < a.hi;
-- Every posted payment must be a fact now (the caller waited for that).
SELECT 'not_in_facts', count(*) FROM public.bench_fresh_payments p
 WHERE NOT EXISTS (SELECT 1 FROM warehouse.fact_payments f WHERE f.payment_id = p.payment_id);
SELECT 'windows', count(*) FROM fresh_runs WHERE run_id > :first_run;
SELECT 'windows_with_payments', count(DISTINCT run_id) FROM fresh_match WHERE matched;
SELECT 'window_ms_p50', coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY
		1000 * extract(epoch FROM run_finished_at - run_started_at))::numeric, 1), 0)
  FROM fresh_runs WHERE run_id > :first_run;
-- Pauses between windows that loaded (an empty window in between makes the
-- worker wait its 'every' before the next): the longest, and how many
-- exceeded 500 ms.
SELECT 'gap_max_ms', coalesce(round(max(g)::numeric), 0), 'gaps_over_500ms', count(*) FILTER (WHERE g > 500)
  FROM (SELECT 1000 * extract(epoch FROM run_started_at - lag(run_finished_at) OVER (ORDER BY run_id)) AS g
          FROM fresh_runs WHERE run_id > :first_run) s;
SELECT 'window_rows_p50', coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY rows_read), 0)
  FROM fresh_runs WHERE run_id > :first_run;

-- ('-' when nothing matched, so that every name keeps a value)
SELECT 'p50', coalesce(round(percentile_cont(0.50) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)::text, '-'),
       'p95', coalesce(round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)::text, '-'),
       'p99', coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)::numeric, 1)::text, '-'),
       'max', coalesce(round(max(latency_ms)::numeric, 1)::text, '-')
  FROM fresh_match WHERE matched;

-- audit.etl_state.source_time promises: everything the source committed up to
-- then is in the warehouse.  A payment committed at or before a sample's
-- source_time whose run had not committed at that sample (its run_id above
-- the sample's newest successful run) breaks the promise.  With the samples
-- ordered by source_time, the smallest last_run among samples with
-- source_time >= c is what a payment committed at c must be within.
CREATE TEMP TABLE fresh_promise AS
	SELECT source_time, min(last_run) OVER (ORDER BY source_time DESC) AS min_last_run
	  FROM public.bench_fresh_samples WHERE source_time IS NOT NULL;
CREATE INDEX ON fresh_promise (source_time);
ANALYZE fresh_promise;
SELECT 'samples', count(*), 'samples_without_source_time', count(*) FILTER (WHERE source_time IS NULL)
  FROM public.bench_fresh_samples;
SELECT 'source_time_backwards', count(*) FROM (
	SELECT source_time < lag(source_time) OVER (ORDER BY sampled_at) AS back FROM public.bench_fresh_samples) s
 WHERE back;
CREATE TEMP TABLE fresh_broken AS
	SELECT m.payment_id, m.txid, m.committed_at, m.run_id, s.source_time, s.min_last_run
	  FROM fresh_match m
	  JOIN LATERAL (SELECT source_time, min_last_run FROM fresh_promise s WHERE s.source_time >= m.committed_at
	                 ORDER BY s.source_time LIMIT 1) s ON true
	 WHERE NOT m.matched OR m.run_id > s.min_last_run;
-- By how much: source_time - committed_at.  A commit timestamp is taken
-- before the commit record is flushed (and, with synchronous replication,
-- before the wait for the standby), and the transaction becomes visible only
-- after that; a snapshot taken in between does not see it although its
-- commit timestamp is older.  Misses within :tolerance_ms are counted apart.
SELECT 'promise_broken', count(*),
       'promise_broken_by_ms', coalesce(round(max(1000 * extract(epoch FROM source_time - committed_at))::numeric, 1), 0),
       'promise_broken_beyond_tolerance', count(*) FILTER (WHERE source_time - committed_at > :tolerance_ms * interval '1 millisecond')
  FROM fresh_broken;
-- How far behind the source the warehouse says it is (sampled_at - source_time).
SELECT 'lag_p50', coalesce(round(percentile_cont(0.50) WITHIN GROUP (ORDER BY l)::numeric, 1)::text, '-'),
       'lag_p99', coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l)::numeric, 1)::text, '-'),
       'lag_max', coalesce(round(max(l)::numeric, 1)::text, '-')
  FROM (SELECT 1000 * extract(epoch FROM sampled_at - source_time) AS l
          FROM public.bench_fresh_samples WHERE source_time IS NOT NULL) s;
