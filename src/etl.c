/*-------------------------------------------------------------------------
 *
 * etl.c
 *		One ETL run, executed inside the ETL background worker.
 *
 * Design (docs/etl.md has the defence):
 *	- The source's change-capture trigger logs each changed key with the
 *	  64-bit id of its transaction (eds.change_log).
 *	- A run opens one REPEATABLE READ snapshot S on the source and takes
 *	  H = xmin(S): every transaction below H has ended, and if it committed
 *	  it is visible in S.  The run loads the keys logged with W <= txid < H
 *	  (W: the warehouse's watermark), reading each row as of S, plus the
 *	  loans and customers those rows point to that the warehouse lacks,
 *	  from the same S.
 *	- Staging, merge (eds.load_staged), the new watermark W = H and the run
 *	  row's 'success' commit in ONE warehouse transaction: a crash anywhere
 *	  leaves the previous state, and the next run redoes the same window.
 *	- The run row is committed as 'running' first and a failure is written
 *	  in a fresh transaction after the abort, so no rollback erases it.
 *	- The merge decides from state: each staged key's warehouse rows are
 *	  made to match its row as of S (or removed), whatever they were, so a
 *	  key read by several runs ends the same.  A TRUNCATE in the window, or
 *	  a requested resync, makes the run read every source row instead.
 *	- A session advisory lock makes runs one at a time; a second one
 *	  records 'skipped'.  Runs found 'running' under the lock were
 *	  interrupted by a crash and are marked failed.  The lock is freed at
 *	  the commit: the acknowledgement to the source and history pruning
 *	  that follow may overlap the next run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eds.h"

/* Keys of the session advisory lock that serialises runs. */
#define ETL_LOCK_KEY1 6579315	/* 'eds' */
#define ETL_LOCK_KEY2 1

int			eds_etl_run_retention = 90; /* days, eds.etl_run_retention */

/* What the source said when the snapshot was taken. */
typedef struct SourcePoint
{
	char	   *horizon;		/* xmin of the snapshot, xid8 as text */
	bool		is_replica;
	char	   *lsn;
	char	   *time;
	char	   *data_time;		/* the primary's time the snapshot's data is as of */
	char	   *xmax;			/* xmax of the snapshot, xid8 as text */
	char	   *purged_upto;	/* NULL: nothing purged */
	char	   *lag;			/* replica: age of the replayed heartbeat */
	double		lag_seconds;
	char	   *source_id;		/* system identifier / database name */
	char	   *held_by;		/* the open transaction at the horizon, or NULL */
	bool		changes_waiting;	/* committed changes beyond the horizon */
} SourcePoint;

int			eds_max_source_lag = 0;	/* seconds, eds.max_source_lag; 0: no limit */

/* ---------------------------------------------------------------- SPI */

/* The context of the run (worker.c makes one per run): results live there. */
static MemoryContext etl_run_cxt = NULL;

static void
etl_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
etl_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* The commit leaves us in TopMemoryContext: back to the run's. */
	MemoryContextSwitchTo(etl_run_cxt);
}

/*
 * Run a statement with text parameters; returns the first column of the
 * first row as text (NULL if none).  The text lives in the run's context,
 * so it outlives the transaction, and goes with the run.
 */
static char *
etl_sql(const char *sql, int nargs, const char **args)
{
	Oid		   *types = palloc(sizeof(Oid) * Max(nargs, 1));
	Datum	   *values = palloc(sizeof(Datum) * Max(nargs, 1));
	char	   *nulls = palloc(Max(nargs, 1) + 1);
	char	   *result = NULL;
	int			rc;

	for (int i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "eds ETL: SPI failed (%s) for: %s", SPI_result_code_string(rc), sql);
	if (SPI_tuptable && SPI_processed > 0 && SPI_tuptable->tupdesc->natts > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			result = MemoryContextStrdup(etl_run_cxt, v);
	}
	return result;
}

static double
etl_ms_since(TimestampTz start)
{
	return (double) (GetCurrentTimestamp() - start) / 1000.0;
}

/* ---------------------------------------------------------------- extract */

/*
 * Stream one source query into a staging table: COPY TO STDOUT there, COPY
 * FROM (with our callback) here.  Nothing is held but the current row.
 */
static int64
etl_copy_into(const char *stage_table, const char *const *columns, const char *query)
{
	Relation	rel;
	ParseState *pstate;
	List	   *attnames = NIL;
	CopyFromState cstate;
	int64		rows;

	eds_progress_phase("extract", stage_table);
	for (int i = 0; columns && columns[i]; i++)
		attnames = lappend(attnames, makeString(pstrdup(columns[i])));

	PQclear(eds_remote_exec(psprintf("COPY (%s) TO STDOUT", query), PGRES_COPY_OUT, "extracting rows"));

	rel = table_openrv(makeRangeVar("staging", (char *) stage_table, -1), RowExclusiveLock);
	pstate = make_parsestate(NULL);
	(void) addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, eds_remote_copy_read, attnames, NIL);
	rows = CopyFrom(cstate);
	EndCopyFrom(cstate);
	table_close(rel, NoLock);
	eds_progress_rows(rows);
	return rows;
}

static const char *const product_cols[] = {"product_id", "product_name", "product_type", NULL};
static const char *const customer_cols[] = {
	"customer_id", "full_name", "email", "phone", "national_id", "city", "country", "segment",
	"created_at", "updated_at", "lossy", "is_deleted", "touched", NULL};
static const char *const loan_cols[] = {
	"loan_id", "customer_id", "product_id", "amount", "interest_rate", "tenure_months", "status",
	"outstanding_balance", "disbursed_at", "maturity_date", "loan_officer", "branch_code",
	"created_at", "updated_at", "lossy", "is_deleted", "touched", NULL};
static const char *const payment_cols[] = {
	"payment_id", "loan_id", "amount", "principal_portion", "interest_portion", "penalty_portion",
	"payment_method", "payment_date", "created_at", "updated_at", "is_deleted", "touched", NULL};

/*
 * The warehouse encoding, when the source's text may hold characters it
 * cannot (NULL otherwise): then free text is extracted through
 * eds.encodable_text() and such rows are flagged lossy.
 */
static const char *extract_encoding = NULL;

static void
etl_choose_extract_encoding(PGconn *conn)
{
	const char *source_encoding = PQparameterStatus(conn, "server_encoding");
	int			here = GetDatabaseEncoding();

	extract_encoding = NULL;
	if (here != PG_UTF8 && here != PG_SQL_ASCII &&
		(source_encoding == NULL || pg_char_to_encoding(source_encoding) != here))
		extract_encoding = GetDatabaseEncodingName();
}

/* A free-text column as extracted, and the lossy flag over a row's columns. */
static char *
etl_text(const char *column)
{
	if (extract_encoding == NULL)
		return pstrdup(column);
	return psprintf("eds.encodable_text(%s, '%s')", column, extract_encoding);
}

static char *
etl_lossy(const char *columns)
{
	if (extract_encoding == NULL)
		return pstrdup("false");
	return psprintf("coalesce(eds.encodable_text(concat_ws(E'\\x1f', %s), '%s') <> concat_ws(E'\\x1f', %s), false)",
					columns, extract_encoding, columns);
}

static char *
etl_customer_select(void)
{
	return psprintf("%s, %s, %s, %s, %s, %s, c.segment, c.created_at, c.updated_at, %s",
					etl_text("c.full_name"), etl_text("c.email"), etl_text("c.phone"),
					etl_text("c.national_id"), etl_text("c.city"), etl_text("c.country"),
					etl_lossy("c.full_name, c.email, c.phone, c.national_id, c.city, c.country"));
}

static char *
etl_loan_select(void)
{
	return psprintf("l.customer_id, l.product_id, l.amount, l.interest_rate, l.tenure_months, l.status, "
					"l.outstanding_balance, l.disbursed_at, l.maturity_date, %s, %s, "
					"l.created_at, l.updated_at, %s",
					etl_text("l.loan_officer"), etl_text("l.branch_code"),
					etl_lossy("l.loan_officer, l.branch_code"));
}

#define PAYMENT_SELECT \
	"p.loan_id, p.amount, p.principal_portion, p.interest_portion, p.penalty_portion, " \
	"p.payment_method, p.payment_date, p.created_at, p.updated_at"

/*
 * Context: the loans (or customers) that staged rows point to and that the
 * warehouse does not hold live, as an array literal, or NULL when there are
 * none.  Only these are read from the source: a referenced key the
 * warehouse already holds is resolved there, and its attributes change only
 * through its own log entries.  The keys are probed one by one (unnest):
 * they are few against the dimension.
 */
#define MISSING_LOANS_SQL \
	"SELECT array_agg(k)::text " \
	"FROM unnest(ARRAY(SELECT DISTINCT s.loan_id FROM staging.stg_payments s " \
	"                  WHERE NOT s.is_deleted AND s.loan_id IS NOT NULL)) AS k " \
	"WHERE NOT EXISTS (SELECT FROM staging.stg_loans l WHERE l.loan_id = k) " \
	"AND NOT EXISTS (SELECT FROM warehouse.dim_loan d WHERE d.loan_id = k AND NOT d.is_deleted)"
#define MISSING_CUSTOMERS_SQL \
	"SELECT array_agg(k)::text " \
	"FROM unnest(ARRAY(SELECT DISTINCT l.customer_id FROM staging.stg_loans l " \
	"                  WHERE NOT l.is_deleted AND l.customer_id IS NOT NULL)) AS k " \
	"WHERE NOT EXISTS (SELECT FROM staging.stg_customers c WHERE c.customer_id = k) " \
	"AND NOT EXISTS (SELECT FROM warehouse.dim_customer d " \
	"                 WHERE d.customer_id = k AND d.is_current AND NOT d.is_deleted)"

/*
 * A key's row on the source, looked up by its primary key (a LATERAL
 * subquery that OFFSET 0 keeps from being flattened into a join: as a join,
 * the planner read all of payments for a few thousand keys).
 */
#define PAYMENT_BY_KEY \
	"LEFT JOIN LATERAL (SELECT * FROM operational.payments p WHERE p.payment_id = k.pk OFFSET 0) p ON true"
#define LOAN_BY_KEY \
	"LEFT JOIN LATERAL (SELECT * FROM operational.loans l WHERE l.loan_id = k.pk OFFSET 0) l ON true"
#define CUSTOMER_BY_KEY \
	"LEFT JOIN LATERAL (SELECT * FROM operational.customers c WHERE c.customer_id = k.pk OFFSET 0) c ON true"

/* Stage as context (not touched) the referenced keys missing_sql finds; returns the rows. */
static int64
etl_copy_context(const char *stage_table, const char *const *columns, const char *missing_sql,
				 const char *select_list, const char *by_key)
{
	char	   *missing = etl_sql(missing_sql, 0, NULL);
	int64		rows;

	if (missing == NULL)
		return 0;
	rows = etl_copy_into(stage_table, columns, psprintf(
		"SELECT k.pk, %s, false FROM unnest('%s'::bigint[]) AS k(pk) %s", select_list, missing, by_key));
	pfree(missing);				/* may be long */
	return rows;
}

/*
 * The keys of the window, read as of the one snapshot (a key whose row is
 * gone comes back is_deleted), then the loans and customers they reference
 * that the warehouse lacks, from the same snapshot.  The bounds are
 * literals so the planner can use the txid index; each key's row is looked
 * up by its primary key (*_BY_KEY), so a run costs what its window holds,
 * whatever the size of the tables.
 */
static void
etl_extract(const char *from, const char *to, bool everything, int64 *rows)
{
	char	   *window;
	char	   *lag_from;

	/*
	 * Lag samples are append-only and written by one worker, so a sample id
	 * watermark is enough; re-reading the last thousand of the minute before
	 * the newest absorbs a sample a manual eds_sample_replication_lag()
	 * committed late, without re-reading a thousand rows every second in
	 * continuous mode.
	 */
	lag_from = etl_sql("SELECT format('sample_id > %s AND sampled_at > %L::timestamptz - interval ''1 minute''', "
					   "coalesce(max(h.sample_id), 0) - 1000, coalesce(max(h.sampled_at), '-infinity')) "
					   "FROM (SELECT sample_id, sampled_at FROM warehouse.replication_lag_history "
					   "      ORDER BY sample_id DESC LIMIT 1) h",
					   0, NULL);
	rows[4] = etl_copy_into("stg_lag_history", NULL, psprintf(
		"SELECT * FROM eds.replication_lag_history WHERE %s", lag_from));

	rows[0] = etl_copy_into("stg_loan_products", product_cols, psprintf(
		"SELECT product_id, %s, %s FROM operational.loan_products",
		etl_text("product_name"), etl_text("product_type")));
	if (everything)
	{
		/* First load or resync: every row in the snapshot. */
		rows[1] = etl_copy_into("stg_customers", customer_cols, psprintf(
			"SELECT c.customer_id, %s, false, true FROM operational.customers c", etl_customer_select()));
		rows[2] = etl_copy_into("stg_loans", loan_cols, psprintf(
			"SELECT l.loan_id, %s, false, true FROM operational.loans l", etl_loan_select()));
		rows[3] = etl_copy_into("stg_payments", payment_cols,
								"SELECT p.payment_id, " PAYMENT_SELECT ", false, true FROM operational.payments p");
		return;
	}

	window = psprintf("txid >= '%s'::xid8 AND txid < '%s'::xid8", from, to);
#define WINDOW_KEYS(table) \
	"WITH k AS (SELECT DISTINCT pk FROM eds.change_log WHERE table_name = '" table "' AND %s) "

	rows[3] = etl_copy_into("stg_payments", payment_cols, psprintf(
		WINDOW_KEYS("payments") "SELECT k.pk, " PAYMENT_SELECT ", p.payment_id IS NULL, true FROM k " PAYMENT_BY_KEY,
		window));
	rows[2] = etl_copy_into("stg_loans", loan_cols, psprintf(
		WINDOW_KEYS("loans") "SELECT k.pk, %s, l.loan_id IS NULL, true FROM k " LOAN_BY_KEY,
		window, etl_loan_select()));
	rows[2] += etl_copy_context("stg_loans", loan_cols, MISSING_LOANS_SQL,
								psprintf("%s, l.loan_id IS NULL", etl_loan_select()), LOAN_BY_KEY);
	rows[1] = etl_copy_into("stg_customers", customer_cols, psprintf(
		WINDOW_KEYS("customers") "SELECT k.pk, %s, c.customer_id IS NULL, true FROM k " CUSTOMER_BY_KEY,
		window, etl_customer_select()));
	rows[1] += etl_copy_context("stg_customers", customer_cols, MISSING_CUSTOMERS_SQL,
								psprintf("%s, c.customer_id IS NULL", etl_customer_select()), CUSTOMER_BY_KEY);
#undef WINDOW_KEYS
}

/*
 * The oldest transaction still open at the snapshot ends the window (its id
 * is the horizon): name it, so a window that stops moving explains itself.
 * backend_xid and the prepared transactions are visible to any role; the
 * session's state and start only to the privileged, so they may be missing.
 * On a replica the primary's sessions are not visible: nothing is named.
 */
#define WINDOW_HOLDER_SQL \
	"SELECT coalesce(" \
	"(SELECT format('prepared transaction %L (xid %s) of %s in database %s, prepared at %s', " \
	"   gid, transaction, owner, database, date_trunc('second', prepared)) " \
	"   FROM pg_catalog.pg_prepared_xacts " \
	"  WHERE transaction::text::bigint = (pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint % 4294967296) " \
	"  LIMIT 1), " \
	"(SELECT format('session pid %s (xid %s) of %s in database %s%s%s', pid, backend_xid, " \
	"   coalesce(usename, '?'), coalesce(datname, '?'), ', ' || state, " \
	"   ', transaction started at ' || date_trunc('second', xact_start)) " \
	"   FROM pg_catalog.pg_stat_activity " \
	"  WHERE backend_xid::text::bigint = (pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint % 4294967296) " \
	"  LIMIT 1)), " \
	"EXISTS (SELECT FROM eds.change_log WHERE txid >= pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()))"

/* Open the snapshot on the source and read where it stands. */
static void
etl_open_snapshot(SourcePoint *sp)
{
	PGresult   *res;
	char	   *version;

	res = eds_remote_exec("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eds'",
						  PGRES_TUPLES_OK, "checking the eds extension");
	if (PQntuples(res) == 0)
	{
		PQclear(res);
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ETL source database has no eds extension"),
				 errdetail("eds reads the source's change log, which CREATE EXTENSION eds installs."),
				 errhint("Run CREATE EXTENSION eds in the source database (on the primary).")));
	}
	version = pstrdup(PQgetvalue(res, 0, 0));
	PQclear(res);

	/*
	 * A 1.0 source does not record TRUNCATE, so this warehouse could not see
	 * one: refuse it rather than load silently wrong.
	 */
	if (strcmp(version, "1.0") == 0)
	{
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ETL source has eds %s, this warehouse needs %s", version, EDS_VERSION),
				 errdetail("eds 1.0 on the source does not record TRUNCATE in its change log."),
				 errhint("Run ALTER EXTENSION eds UPDATE on the source primary, then run the ETL again.")));
	}

	PQclear(eds_remote_exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
							PGRES_COMMAND_OK, "starting the snapshot"));
	res = eds_remote_exec("SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_is_in_recovery(), "
						  "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
						  "ELSE pg_current_wal_lsn() END)::text, now()::text, "
						  "(SELECT purged_upto::text FROM eds.change_log_horizon), "
						  "CASE WHEN pg_is_in_recovery() THEN "
						  "(now() - (SELECT max(beat_at) FROM eds.heartbeat))::text END, "
						  "CASE WHEN pg_is_in_recovery() THEN "
						  "extract(epoch FROM now() - (SELECT max(beat_at) FROM eds.heartbeat)) END, "
						  "(SELECT system_identifier::text FROM pg_control_system()) || '/' || current_database(), "
						  /*
						   * What the data is as of, on the primary's clock: its
						   * transaction start (before the snapshot), or on a replica
						   * the newest heartbeat the snapshot holds.
						   */
						  "(CASE WHEN pg_is_in_recovery() THEN (SELECT max(beat_at) FROM eds.heartbeat) "
						  "ELSE now() END)::text, pg_snapshot_xmax(pg_current_snapshot())::text",
						  PGRES_TUPLES_OK, "taking the snapshot");
	sp->horizon = pstrdup(PQgetvalue(res, 0, 0));
	sp->is_replica = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	sp->lsn = PQgetisnull(res, 0, 2) ? NULL : pstrdup(PQgetvalue(res, 0, 2));
	sp->time = pstrdup(PQgetvalue(res, 0, 3));
	sp->purged_upto = PQgetisnull(res, 0, 4) ? NULL : pstrdup(PQgetvalue(res, 0, 4));
	sp->lag = PQgetisnull(res, 0, 5) ? NULL : pstrdup(PQgetvalue(res, 0, 5));
	sp->lag_seconds = PQgetisnull(res, 0, 6) ? 0 : strtod(PQgetvalue(res, 0, 6), NULL);
	sp->source_id = pstrdup(PQgetvalue(res, 0, 7));
	sp->data_time = PQgetisnull(res, 0, 8) ? NULL : pstrdup(PQgetvalue(res, 0, 8));
	sp->xmax = pstrdup(PQgetvalue(res, 0, 9));
	PQclear(res);

	res = eds_remote_exec(WINDOW_HOLDER_SQL, PGRES_TUPLES_OK, "looking for the transaction at the horizon");
	sp->held_by = PQgetisnull(res, 0, 0) ? NULL : pstrdup(PQgetvalue(res, 0, 0));
	sp->changes_waiting = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
	PQclear(res);

	/*
	 * A replica far behind would load an old state (never a wrong one: the
	 * watermark does not move back).  Its lag is the age of the newest
	 * primary heartbeat it has replayed, which assumes synchronized clocks.
	 */
	if (sp->is_replica && eds_max_source_lag > 0 && sp->lag_seconds > eds_max_source_lag)
	{
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ETL source replica is %.0f s behind the primary, more than eds.max_source_lag (%d s)",
						sp->lag_seconds, eds_max_source_lag),
				 errdetail("Its newest replayed heartbeat is %s old.", sp->lag ? sp->lag : "?"),
				 errhint("Wait for the replica to catch up, check its replay (pg_is_wal_replay_paused()), "
						 "or point eds_set_source() at the primary.")));
	}
}

/*
 * Whether the window holds a TRUNCATE of a captured table: then the change
 * log cannot say which keys went, and the run reads every row instead.
 */
static bool
etl_window_has_truncate(const char *from, const char *to)
{
	PGresult   *res;
	bool		found;

	res = eds_remote_exec(psprintf("SELECT EXISTS (SELECT FROM eds.change_log WHERE op = 'T' "
								   "AND txid >= '%s'::xid8 AND txid < '%s'::xid8)", from, to),
						  PGRES_TUPLES_OK, "looking for a TRUNCATE in the window");
	found = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return found;
}

/* ---------------------------------------------------------------- the run */

#define PRIMARY_SERVER "eds_source_primary"

/* This warehouse's name in the source's eds.etl_consumers. */
static char *
etl_consumer_name(void)
{
	return etl_sql("SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()", 0, NULL);
}

/*
 * A replica cannot record who reads it, so the primary would purge changes
 * this warehouse has not loaded.  Before reading a replica the warehouse
 * must be a consumer on the primary: registered there through
 * eds_source_primary at watermark 0 (which holds every purge until the
 * first acknowledgement), or refused.  Returns whether it had to register
 * (then the caller reopens its snapshot on the replica).
 */
static bool
etl_ensure_consumer(const SourcePoint *sp)
{
	char	   *consumer = etl_consumer_name();
	PGresult   *res;
	bool		known;

	res = eds_remote_exec(psprintf("SELECT eds.etl_is_consumer(%s)",
								   quote_literal_cstr(consumer)),
						  PGRES_TUPLES_OK, "looking for this warehouse among the source's consumers");
	known = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (known)
		return false;
	if (!eds_remote_server_exists(PRIMARY_SERVER))
	{
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the ETL source is a replica, and this warehouse is not a consumer of its primary"),
				 errdetail("The primary purges its change log below what its known consumers have loaded; "
						   "it does not know %s, so it could purge changes this warehouse still needs.", consumer),
				 errhint("Declare the primary with SELECT eds_set_source_primary('host=... port=... dbname=... user=... "
						 "password=...'), or run the ETL once from the primary.")));
	}
	eds_remote_disconnect();
	eds_remote_connect_to(PRIMARY_SERVER);
	PQclear(eds_remote_exec(psprintf("SELECT eds.etl_acknowledge(%s, '0'::xid8, NULL, 0)", quote_literal_cstr(consumer)),
							PGRES_TUPLES_OK, "registering this warehouse as a consumer of the primary"));
	eds_remote_disconnect();
	return true;
}

/*
 * Refuse a source that is not the one this warehouse was loaded from: its
 * transaction ids, and so the watermark, mean nothing there.
 */
static void
etl_check_source_identity(const char *loaded_from, const SourcePoint *sp)
{
	if (loaded_from == NULL || strcmp(loaded_from, sp->source_id) == 0)
		return;
	eds_remote_disconnect();
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the ETL source is another database than the one this warehouse was loaded from"),
			 errdetail("The warehouse was loaded from %s (system identifier/database); the source now is %s.",
					   loaded_from, sp->source_id),
			 errhint("Point eds_set_source() back at the original source or one of its replicas; if the new source "
					 "is meant to replace it, run SELECT eds_etl_resync() and then eds_run_etl().")));
}

/*
 * How fresh the warehouse is (audit.etl_state.source_time): every source
 * transaction committed before it is loaded.  With no committed change
 * beyond the horizon ($7 false) that holds for the snapshot's own time
 * ($5).  Otherwise an earlier snapshot (pending_xmax, pending_time) counts
 * once the watermark reaches its xmax: every transaction that had committed
 * by its time has an id below that xmax, so has been loaded.  The newest
 * snapshot becomes the pending one when none is waiting to be covered.
 */
#define FRESHNESS_SQL \
	"source_time = CASE WHEN NOT $7::boolean THEN greatest(s.source_time, $5::timestamptz) " \
	"  WHEN s.pending_xmax <= excluded.watermark THEN greatest(s.source_time, s.pending_time) " \
	"  ELSE s.source_time END, " \
	"pending_xmax = CASE WHEN NOT $7::boolean OR s.pending_xmax IS NULL OR s.pending_xmax <= excluded.watermark " \
	"  THEN $6::xid8 ELSE s.pending_xmax END, " \
	"pending_time = CASE WHEN NOT $7::boolean OR s.pending_xmax IS NULL OR s.pending_xmax <= excluded.watermark " \
	"  THEN $5::timestamptz ELSE s.pending_time END, "

/*
 * Empty the staging tables that hold rows.  A continuous window that finds
 * nothing would otherwise truncate five tables every second: new files and
 * catalog rows each time.  The two small ones are always refilled, so they
 * are emptied by DELETE.
 */
static void
etl_clear_staging(void)
{
	char	   *full = etl_sql("SELECT concat_ws(', ', "
							   "CASE WHEN EXISTS (SELECT FROM staging.stg_customers) THEN 'staging.stg_customers' END, "
							   "CASE WHEN EXISTS (SELECT FROM staging.stg_loans) THEN 'staging.stg_loans' END, "
							   "CASE WHEN EXISTS (SELECT FROM staging.stg_payments) THEN 'staging.stg_payments' END)",
							   0, NULL);

	if (full && full[0] != '\0')
		etl_sql(psprintf("TRUNCATE %s", full), 0, NULL);
	etl_sql("DELETE FROM staging.stg_loan_products", 0, NULL);
	etl_sql("DELETE FROM staging.stg_lag_history", 0, NULL);
}

/* Where a committed run records its extract: nowhere, the source, or the primary behind it. */
typedef enum EtlAcknowledge
{
	ACK_NONE,
	ACK_SOURCE,
	ACK_PRIMARY
} EtlAcknowledge;

/*
 * The load transaction: extract, merge, move the watermark, mark success.
 * Returns where to acknowledge what was loaded; *recorded says whether the
 * run row stays (a continuous window that found nothing removes it).
 */
static EtlAcknowledge
etl_load(int64 run_id, const char *run_id_text, EtlOrigin origin, bool *recorded)
{
	TimestampTz t0 = GetCurrentTimestamp();
	TimestampTz t;
	double		ms_connect,
				ms_extract,
				ms_load;
	SourcePoint sp;
	char	   *watermark;
	char	   *resync_text;
	char	   *loaded_from;
	char	   *counts;
	char	   *source_desc;
	const char *mode;
	int64		rows[5] = {0, 0, 0, 0, 0};
	bool		full;
	bool		resync;
	bool		noop = false;
	bool		merged = true;
	bool		quiet;
	char	   *note = NULL;
	EtlAcknowledge ack;

	etl_begin();
	eds_progress_phase("connect", NULL);
	source_desc = eds_remote_describe();
	etl_choose_extract_encoding(eds_remote_connect());
	etl_open_snapshot(&sp);
	if (sp.is_replica && etl_ensure_consumer(&sp))
	{
		eds_remote_connect();
		etl_open_snapshot(&sp);
	}
	ms_connect = etl_ms_since(t0);

	watermark = etl_sql("SELECT watermark::text FROM audit.etl_state", 0, NULL);
	resync_text = etl_sql("SELECT resync::text FROM audit.etl_state", 0, NULL);
	loaded_from = etl_sql("SELECT source_id FROM audit.etl_state", 0, NULL);
	full = (watermark == NULL);
	resync = !full && resync_text && strcmp(resync_text, "true") == 0;

	if (full)
	{
		if (etl_sql("SELECT 1 WHERE EXISTS (SELECT FROM warehouse.dim_customer) "
					"OR EXISTS (SELECT FROM warehouse.dim_loan) "
					"OR EXISTS (SELECT FROM warehouse.fact_payments)", 0, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the warehouse holds data but no ETL watermark"),
					 errdetail("audit.etl_state is empty, so eds cannot tell which source changes the warehouse already has."),
					 errhint("To reload from scratch, TRUNCATE warehouse.fact_payments, warehouse.fact_loans, "
							 "warehouse.dim_loan, warehouse.dim_customer, eds.fact_payment_keys and run eds_run_etl() again.")));
	}
	else if (!resync)
	{
		const char *args[2] = {sp.purged_upto, watermark};

		etl_check_source_identity(loaded_from, &sp);
		if (sp.purged_upto && etl_sql("SELECT 1 WHERE $1::xid8 > $2::xid8", 2, args))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("the source's change log was purged past this warehouse's watermark"),
					 errdetail("The warehouse has loaded up to transaction %s, but the source kept changes only from %s on.",
							   watermark, sp.purged_upto),
					 errhint("Run SELECT eds_etl_resync(), then eds_run_etl(): that run reads every source row "
							 "and makes the warehouse match it.")));
		args[0] = sp.horizon;
		if (etl_sql("SELECT 1 WHERE $1::xid8 < $2::xid8", 2, args))
		{
			/* A replica behind what we already loaded: load nothing, never go back. */
			noop = true;
			note = psprintf("source is behind the warehouse (its horizon %s < watermark %s): nothing loaded",
							sp.horizon, watermark);
		}
		else if (etl_window_has_truncate(watermark, sp.horizon))
		{
			resync = true;
			note = pstrdup("a captured table was truncated on the source: every row read (resync)");
		}
	}
	mode = full ? "full" : resync ? "resync" : "incremental";

	etl_clear_staging();

	t = GetCurrentTimestamp();
	if (!noop)
		etl_extract(watermark, sp.horizon, full || resync, rows);
	PQclear(eds_remote_exec("COMMIT", PGRES_COMMAND_OK, "ending the snapshot"));
	ms_extract = etl_ms_since(t);

	t = GetCurrentTimestamp();
	eds_progress_phase("load", NULL);

	/*
	 * An incremental run that staged no change has nothing to merge: the
	 * merge's fixed cost (temporary tables, ANALYZE, a dozen statements)
	 * would be most of a no-change run.  Products are read whole every run;
	 * one that changed is a change.
	 */
	merged = full || resync || rows[1] + rows[2] + rows[3] > 0 ||
		etl_sql("SELECT 1 WHERE EXISTS (SELECT FROM staging.stg_loan_products p "
				"FULL JOIN eds.loan_products_loaded o USING (product_id) "
				"WHERE (o.product_name, o.product_type) IS DISTINCT FROM (p.product_name, p.product_type))",
				0, NULL) != NULL;
	if (!merged)
	{
		counts = psprintf("{\"customers\": {\"read\": 0, \"inserted\": 0, \"updated\": 0, \"new_versions\": 0, \"deleted\": 0}, "
						  "\"loans\": {\"read\": 0, \"inserted\": 0, \"updated\": 0, \"deleted\": 0}, "
						  "\"payments\": {\"read\": 0, \"inserted\": 0, \"updated\": 0, \"deleted\": 0, \"rejected\": 0}, "
						  "\"fact_loans\": {\"inserted\": 0, \"updated\": 0, \"deleted\": 0}}");
	}
	else
	{
		char	   *payments_read = psprintf(INT64_FORMAT, rows[3]);
		const char *load_args[5] = {run_id_text, sp.time, full ? "true" : "false",
			resync ? "true" : "false", payments_read};

		counts = etl_sql("SELECT eds.load_staged($1::bigint, $2::timestamptz, $3::boolean, $4::boolean, "
						 "$5::bigint)::text", 5, load_args);
	}

	/* Lag samples: append-only on the source; overlap is absorbed here. */
	SPI_execute("INSERT INTO warehouse.replication_lag_history SELECT * FROM staging.stg_lag_history "
				"ON CONFLICT (sample_id) DO NOTHING", false, 0);
	ms_load = etl_ms_since(t);

	/*
	 * A continuous window that found nothing: no run row, the state says it
	 * ran.  But a window that stops at a horizon while changes wait is
	 * recorded once, so the stall shows (eds_health()'s 'etl window').
	 */
	quiet = origin == ETL_CONTINUOUS && !merged && note == NULL;
	if (quiet && sp.changes_waiting)
	{
		const char *args[1] = {sp.horizon};

		quiet = etl_sql("SELECT 1 FROM audit.etl_runs r JOIN audit.etl_state s ON r.run_id = s.last_success_run "
						"WHERE r.to_txid = $1::xid8", 1, args) != NULL;
	}
	*recorded = !quiet;

	eds_progress_phase("finish", NULL);
	{
		/*
		 * A replica behind us loaded nothing: a pending resync waits for a
		 * real run, and the freshness does not move.
		 */
		const char *state_args[7] = {noop ? watermark : sp.horizon, quiet ? NULL : run_id_text,
			(noop && resync_text && strcmp(resync_text, "true") == 0) ? "true" : "false",
			sp.source_id, sp.data_time, sp.xmax, (noop || sp.changes_waiting) ? "true" : "false"};

		etl_sql("INSERT INTO audit.etl_state AS s (id, watermark, resync, source_id, last_success_run, "
				"source_time, checked_at, pending_xmax, pending_time) "
				"VALUES (1, $1::xid8, $3::boolean, $4, $2::bigint, "
				"CASE WHEN NOT $7::boolean THEN $5::timestamptz END, clock_timestamp(), $6::xid8, $5::timestamptz) "
				"ON CONFLICT (id) DO UPDATE SET watermark = excluded.watermark, "
				"resync = excluded.resync, source_id = excluded.source_id, "
				"last_success_run = coalesce(excluded.last_success_run, s.last_success_run), "
				FRESHNESS_SQL
				"checked_at = excluded.checked_at",
				7, state_args);
	}
	if (quiet)
		etl_sql("DELETE FROM audit.etl_runs WHERE run_id = $1::bigint", 1, &run_id_text);
	else
	{
		char	   *phases = psprintf("{\"connect\": %.1f, \"extract\": %.1f, \"load\": %.1f}",
									  ms_connect, ms_extract, ms_load);
		const char *args[14] = {run_id_text, mode, source_desc, sp.is_replica ? "true" : "false",
			watermark, noop ? watermark : sp.horizon, sp.lsn, sp.time, counts, phases, note, sp.lag,
		sp.held_by, sp.changes_waiting ? "true" : "false"};

		etl_sql("UPDATE audit.etl_runs SET status = 'success', run_finished_at = clock_timestamp(), "
				"mode = $2, source_server = $3, source_is_replica = $4::boolean, from_txid = $5::xid8, "
				"to_txid = $6::xid8, source_lsn = $7::pg_lsn, source_time = $8::timestamptz, "
				"table_counts = $9::jsonb, phase_ms = $10::jsonb, note = $11, source_lag = $12::interval, "
				"window_held_by = $13, changes_waiting = $14::boolean, "
				"rows_read = (SELECT sum((v->>'read')::bigint) FROM jsonb_each($9::jsonb) AS e(k, v)), "
				"rows_inserted = (SELECT sum((v->>'inserted')::bigint) FROM jsonb_each($9::jsonb) AS e(k, v)), "
				"rows_updated = (SELECT sum((v->>'updated')::bigint) FROM jsonb_each($9::jsonb) AS e(k, v)), "
				"rows_deleted = (SELECT sum((v->>'deleted')::bigint) FROM jsonb_each($9::jsonb) AS e(k, v)), "
				"rows_rejected = ($9::jsonb #>> '{payments,rejected}')::bigint "
				"WHERE run_id = $1::bigint", 14, args);
	}
	/* Decided before the commit: the catalog is only readable in a transaction. */
	ack = noop ? ACK_NONE : !sp.is_replica ? ACK_SOURCE :
		eds_remote_server_exists(PRIMARY_SERVER) ? ACK_PRIMARY : ACK_NONE;
	etl_commit();
	return ack;
}

/*
 * After the warehouse commit: tell the source (or, for a replica, its
 * primary) how far this warehouse has read and let it purge what every
 * consumer has loaded.  Best effort: a failure here loses nothing (the next
 * run repeats it), so it only warns.
 */
static void
etl_acknowledge(const char *run_id_text, EtlAcknowledge where)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	PG_TRY();
	{
		char	   *consumer;
		char	   *watermark;
		char	   *rows;
		char	   *loaded_from;
		char	   *sql;

		etl_begin();
		consumer = etl_consumer_name();
		loaded_from = etl_sql("SELECT source_id FROM audit.etl_state", 0, NULL);
		watermark = etl_sql("SELECT watermark::text FROM audit.etl_state", 0, NULL);
		rows = etl_sql("SELECT coalesce(rows_read, 0)::text FROM audit.etl_runs WHERE run_id = $1::bigint",
					   1, &run_id_text);
		/* Connecting reads the catalog (server, user mapping): in the transaction. */
		if (where == ACK_PRIMARY)
		{
			eds_remote_disconnect();
			eds_remote_connect_to(PRIMARY_SERVER);
		}
		etl_commit();

		if (where == ACK_PRIMARY)
		{
			PGresult   *res;

			res = eds_remote_exec("SELECT pg_is_in_recovery(), system_identifier::text || '/' || current_database() "
								  "FROM pg_control_system()", PGRES_TUPLES_OK, "checking the primary");
			if (strcmp(PQgetvalue(res, 0, 0), "t") == 0 || !loaded_from ||
				strcmp(PQgetvalue(res, 0, 1), loaded_from) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("eds_source_primary is not the primary of the replica the run read"),
						 errhint("Declare the replica's primary with eds_set_source_primary().")));
			PQclear(res);
		}
		sql = psprintf("SELECT eds.etl_acknowledge(%s, '%s'::xid8, %s, %s)",
					   quote_literal_cstr(consumer), watermark, run_id_text, rows);
		PQclear(eds_remote_exec(sql, PGRES_TUPLES_OK, "recording the extract on the source"));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errmsg("eds ETL run %s loaded, but could not record the extract on the source: %s",
						run_id_text, edata->message),
				 errhint("The source's change log is purged on a later run; nothing is lost.")));
	}
	PG_END_TRY();
}

/* Keep audit.etl_runs, its rejects and pg_cron's history for eds.etl_run_retention days. */
static void
etl_prune_history(void)
{
	char	   *days = psprintf("%d", eds_etl_run_retention);
	const char *args[1] = {days};

	etl_begin();
	etl_sql("DELETE FROM audit.etl_rejects WHERE run_id IN (SELECT run_id FROM audit.etl_runs "
			"WHERE status <> 'running' AND run_started_at < now() - make_interval(days => $1::integer))",
			1, args);
	etl_sql("DELETE FROM audit.etl_runs WHERE status <> 'running' "
			"AND run_started_at < now() - make_interval(days => $1::integer)", 1, args);
	etl_sql("DELETE FROM warehouse.replication_lag_history "
			"WHERE sampled_at < now() - make_interval(days => $1::integer)", 1, args);
	if (etl_sql("SELECT 1 WHERE to_regclass('cron.job_run_details') IS NOT NULL", 0, NULL))
		etl_sql("DELETE FROM cron.job_run_details WHERE jobid IN "
				"(SELECT jobid FROM cron.job WHERE jobname = 'eds_etl') "
				"AND start_time < now() - make_interval(days => $1::integer)", 1, args);
	etl_commit();
}

/*
 * The run's row is committed (success, failure or skip): the caller of
 * eds_run_etl() may read it and return.  A worker that stays for the next
 * run does not end, so it must say so.
 */
static void
etl_release_caller(int64 token, pid_t caller_pid)
{
	eds_progress_committed(token);
	if (caller_pid != 0)
	{
		PGPROC	   *caller = BackendPidGetProc(caller_pid);

		if (caller)
			SetLatch(&caller->procLatch);
	}
}

/*
 * A call finds the run lock taken.  With continuous mode on that is a
 * window, a short one: the call waits for it and then runs, so what it
 * returns includes what was committed before it.  Otherwise (or for a
 * window) the caller records a skip.  Returns whether the lock is now ours.
 */
static bool
etl_wait_for_window(EtlOrigin origin)
{
	if (origin == ETL_CONTINUOUS ||
		etl_sql("SELECT 1 FROM audit.etl_continuous WHERE enabled", 0, NULL) == NULL)
		return false;
	pgstat_report_activity(STATE_RUNNING, "eds ETL: waiting for the continuous window in progress");
	etl_sql("SELECT pg_advisory_lock(" CppAsString2(ETL_LOCK_KEY1) ", " CppAsString2(ETL_LOCK_KEY2) ")", 0, NULL);
	return true;
}

/*
 * A failed continuous window with the same error as the run before it (the
 * source still down, say) adds an attempt to that run's row instead of a
 * row of its own.  Returns whether it did.
 */
static bool
etl_count_repeated_failure(const char *run_id_text, const char *message, const char *sqlstate)
{
	const char *args[3] = {run_id_text, message, sqlstate};

	return strcmp(etl_sql("WITH prev AS (SELECT run_id FROM audit.etl_runs "
						  "  WHERE run_id < $1::bigint AND status IN ('success', 'failed') "
						  "  ORDER BY run_id DESC LIMIT 1), "
						  "again AS (UPDATE audit.etl_runs r SET attempts = r.attempts + 1, "
						  "  last_attempt_at = clock_timestamp() FROM prev "
						  "  WHERE r.run_id = prev.run_id AND r.status = 'failed' AND r.origin = 'continuous' "
						  "  AND r.error_message IS NOT DISTINCT FROM $2 AND r.sqlstate IS NOT DISTINCT FROM $3 "
						  "  RETURNING r.run_id), "
						  "gone AS (DELETE FROM audit.etl_runs d USING again WHERE d.run_id = $1::bigint "
						  "  RETURNING d.run_id) "
						  "SELECT count(*)::text FROM gone", 3, args), "1") == 0;
}

/*
 * Continuous mode paces its housekeeping: windows back to back need not each
 * write to the source (the purge it allows can wait seconds) nor prune.
 */
#define CONTINUOUS_ACK_LOADED_MS (10 * 1000)
#define CONTINUOUS_ACK_EVERY_MS (60 * 1000)
#define CONTINUOUS_PRUNE_EVERY_MS (10 * 60 * 1000)

EtlOutcome
eds_etl_run(int64 token, pid_t caller_pid, EtlOrigin origin)
{
	static TimestampTz last_acknowledged = 0;
	static TimestampTz last_pruned = 0;
	char	   *token_text = psprintf(INT64_FORMAT, token);
	char	   *run_id_text;
	int64		run_id;
	MemoryContext runcxt = CurrentMemoryContext;
	EtlAcknowledge acknowledge = ACK_NONE;
	bool		recorded = true;
	TimestampTz now;

	etl_run_cxt = runcxt;

	/* One run at a time: a session lock, held until the run has committed or failed. */
	etl_begin();
	if (strcmp(etl_sql("SELECT pg_try_advisory_lock(" CppAsString2(ETL_LOCK_KEY1) ", "
					   CppAsString2(ETL_LOCK_KEY2) ")::text", 0, NULL), "true") != 0 &&
		!etl_wait_for_window(origin))
	{
		const char *args[1] = {token_text};

		if (origin == ETL_CONTINUOUS)
		{
			/* A call's run holds the lock: the next window comes after it. */
			etl_commit();
			return ETL_BUSY;
		}

		etl_sql("INSERT INTO audit.etl_runs (status, request_token, run_finished_at, note) "
				"SELECT 'skipped', $1::bigint, clock_timestamp(), "
				"coalesce('run ' || max(run_id) || ' was in progress', 'another run was in progress') "
				"FROM audit.etl_runs WHERE status = 'running'", 1, args);
		etl_commit();
		etl_release_caller(token, caller_pid);
		return ETL_BUSY;
	}
	etl_sql("UPDATE audit.etl_runs SET status = 'failed', run_finished_at = clock_timestamp(), "
			"error_message = 'interrupted: the server or the ETL worker stopped during the run' "
			"WHERE status = 'running'", 0, NULL);
	{
		const char *args[2] = {token != 0 ? token_text : NULL,
		origin == ETL_CONTINUOUS ? "continuous" : "call"};

		run_id_text = MemoryContextStrdup(runcxt,
										  etl_sql("INSERT INTO audit.etl_runs (status, request_token, origin) "
												  "VALUES ('running', $1::bigint, $2) RETURNING run_id::text",
												  2, args));
	}
	etl_commit();
	run_id = pg_strtoint64(run_id_text);
	eds_progress_start(run_id);
	pgstat_report_activity(STATE_RUNNING, psprintf("eds ETL run %s", run_id_text));

	PG_TRY();
	{
		acknowledge = etl_load(run_id, run_id_text, origin, &recorded);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(runcxt);
		edata = CopyErrorData();
		FlushErrorState();
		eds_remote_disconnect();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(runcxt);

		/* A fresh transaction, so the failure survives the rollback. */
		etl_begin();
		{
			/* Keep both: the detail says what happened, the hint what to do. */
			char	   *detail = (edata->detail && edata->hint) ?
				psprintf("%s\nHint: %s", edata->detail, edata->hint) :
				edata->detail ? edata->detail :
				edata->hint ? psprintf("Hint: %s", edata->hint) : NULL;
			char	   *why = edata->sqlerrcode == ERRCODE_QUERY_CANCELED ? eds_progress_abandoned_why(token) : NULL;
			const char *message = why ? psprintf("canceled: the caller of eds_run_etl() stopped waiting (%s)", why) :
				edata->message;
			const char *args[4] = {run_id_text, message, detail, unpack_sql_state(edata->sqlerrcode)};

			if (origin != ETL_CONTINUOUS || !etl_count_repeated_failure(run_id_text, message, args[3]))
				etl_sql("UPDATE audit.etl_runs SET status = 'failed', run_finished_at = clock_timestamp(), "
						"error_message = $2, error_detail = $3, sqlstate = $4 WHERE run_id = $1::bigint", 4, args);
			/* A session lock: the abort kept it, and this worker may stay for the next run. */
			etl_sql("SELECT pg_advisory_unlock(" CppAsString2(ETL_LOCK_KEY1) ", "
					CppAsString2(ETL_LOCK_KEY2) ")::text", 0, NULL);
		}
		etl_commit();
		ereport(LOG,
				(errmsg("eds ETL run %s failed: %s", run_id_text, edata->message)));
		eds_progress_end();
		etl_release_caller(token, caller_pid);
		pgstat_report_activity(STATE_IDLE, NULL);
		return ETL_FAILED;
	}
	PG_END_TRY();

	/*
	 * The result is committed: free the run lock and let the caller return.
	 * What follows is housekeeping (telling the source, which then purges
	 * its change log; pruning old history) that no caller needs to wait for,
	 * and that a next run may overlap safely.
	 */
	etl_begin();
	etl_sql("SELECT pg_advisory_unlock(" CppAsString2(ETL_LOCK_KEY1) ", "
			CppAsString2(ETL_LOCK_KEY2) ")::text", 0, NULL);
	etl_commit();
	eds_progress_end();
	etl_release_caller(token, caller_pid);
	pgstat_report_activity(STATE_RUNNING, psprintf("eds ETL run %s: housekeeping", run_id_text));

	/*
	 * A continuous window tells the source what it loaded at most every ten
	 * seconds (the source purges its change log up to there), one that found
	 * nothing once a minute, so the source still sees this consumer alive.
	 */
	now = GetCurrentTimestamp();
	if (acknowledge != ACK_NONE &&
		(origin != ETL_CONTINUOUS ||
		 TimestampDifferenceExceeds(last_acknowledged, now,
									recorded ? CONTINUOUS_ACK_LOADED_MS : CONTINUOUS_ACK_EVERY_MS)))
	{
		etl_acknowledge(run_id_text, acknowledge);
		last_acknowledged = now;
	}
	/* The source connection stays for the worker's next run (worker.c ends it). */
	if (origin != ETL_CONTINUOUS || TimestampDifferenceExceeds(last_pruned, now, CONTINUOUS_PRUNE_EVERY_MS))
	{
		etl_prune_history();
		last_pruned = now;
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	return recorded ? ETL_LOADED : ETL_EMPTY;
}
