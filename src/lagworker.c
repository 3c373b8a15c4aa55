/*-------------------------------------------------------------------------
 *
 * lagworker.c
 *		The eds background worker: samples replication lag and writes the
 *		heartbeat on a primary, every eds.lag_sample_interval.
 *
 * Written the way worker_spi is: standard signal handlers (SIGHUP reloads
 * the settings, SIGTERM ends the worker at once), one WaitLatch per pass,
 * one short transaction per pass.  The sampling itself is SQL,
 * eds_sample_replication_lag(), so pg_cron users and tests run exactly
 * what the worker runs.
 *
 * Until eds.worker_database exists the worker connects to no database and
 * checks for it each interval, quietly; once it exists the worker restarts
 * itself connected to it.  Until the extension is created there, a pass
 * does nothing.  On a standby a pass only notices the role; after a
 * promotion the next pass samples as a primary.  An error is logged and
 * the next pass is delayed, doubling up to five minutes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eds.h"

#define LAG_MAX_BACKOFF_MS (5 * 60 * 1000)

bool		eds_lag_worker_enabled = true;
char	   *eds_worker_database = NULL;
int			eds_lag_sample_interval = 10;	/* seconds */
int			eds_lag_retention = 7;	/* days */

/* Survives the worker's restarts: did we already see the database? */
typedef struct LagShared
{
	bool		database_seen;
} LagShared;

static LagShared *lag_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PGDLLEXPORT void eds_lag_worker_main(Datum main_arg);

static void
lag_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(LagShared)));
}

static void
lag_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	lag_shared = ShmemInitStruct("eds lag worker", sizeof(LagShared), &found);
	if (!found)
		lag_shared->database_seen = false;
	LWLockRelease(AddinShmemInitLock);
}

/* Sleep on the latch; handle a reload; return on timeout or wakeup. */
static void
lag_wait(long delay_ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 delay_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/*
 * Does eds.worker_database exist?  Without a database only shared catalogs
 * can be read, by a plain heap scan of pg_database (as the autovacuum
 * launcher does): the syscache lookups need a database.
 */
static bool
lag_database_exists(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
		found = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tup))->datname), eds_worker_database) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/* Connected to no database: wait until ours exists, then restart into it. */
static void
lag_wait_for_database(void)
{
	bool		logged = false;

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	for (;;)
	{
		bool		exists;

		exists = lag_database_exists();
		if (exists)
		{
			lag_shared->database_seen = true;
			proc_exit(1);		/* restarted by the postmaster, now connecting */
		}
		if (!logged)
		{
			ereport(LOG,
					(errmsg("eds worker: waiting for database \"%s\" to be created", eds_worker_database),
					 errhint("Set eds.worker_database to the database where CREATE EXTENSION eds runs.")));
			logged = true;
		}
		lag_wait(eds_lag_sample_interval * 1000L);
	}
}

/* One pass: sample (and hourly prune) on a primary; report role changes. */
static void
lag_pass(bool *was_standby, TimestampTz *last_prune)
{
	bool		standby;
	char	   *schema = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "eds: sampling replication lag");

	standby = RecoveryInProgress();
	if (standby != *was_standby)
		ereport(LOG,
				(errmsg("eds worker: this server is now a %s", standby ? "standby" : "primary")));
	*was_standby = standby;

	if (SPI_execute("SELECT e.extnamespace::regnamespace::text FROM pg_catalog.pg_extension e "
					"WHERE e.extname = 'eds'", true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		schema = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	if (schema && !standby)
	{
		if (SPI_execute(psprintf("SELECT %s.eds_sample_replication_lag()", schema), false, 0) != SPI_OK_SELECT)
			elog(ERROR, "eds worker: sampling failed");
		if (GetCurrentTimestamp() - *last_prune > USECS_PER_HOUR)
		{
			SPI_execute("SELECT eds.prune_lag_history()", false, 0);
			*last_prune = GetCurrentTimestamp();
		}
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

void
eds_lag_worker_main(Datum main_arg)
{
	MemoryContext passcxt;

	/* Static: they must survive the longjmp of an error inside a pass. */
	static bool was_standby;
	static TimestampTz last_prune = 0;
	static int	failures = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (!lag_shared->database_seen)
		lag_wait_for_database();
	BackgroundWorkerInitializeConnection(eds_worker_database, NULL, 0);
	pgstat_report_appname("eds worker");

	/* Our SQL names its schemas; nothing in public may capture a call. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	was_standby = RecoveryInProgress();
	passcxt = AllocSetContextCreate(TopMemoryContext, "eds worker pass", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		long		delay_ms = eds_lag_sample_interval * 1000L;

		MemoryContextSwitchTo(passcxt);
		PG_TRY();
		{
			lag_pass(&was_standby, &last_prune);
			failures = 0;
		}
		PG_CATCH();
		{
			/* Log it, clean up, and come back later, more slowly each time. */
			MemoryContextSwitchTo(passcxt);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			pgstat_report_activity(STATE_IDLE, NULL);
			failures = Min(failures + 1, 16);
			delay_ms = Min(delay_ms << failures, LAG_MAX_BACKOFF_MS);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(passcxt);

		lag_wait(delay_ms);
	}
}

void
eds_lag_worker_init(void)
{
	BackgroundWorker worker;

	DefineCustomBoolVariable("eds.lag_worker",
							 "Starts the eds background worker (lag sampling, heartbeat).",
							 NULL, &eds_lag_worker_enabled, true,
							 PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("eds.worker_database",
							   "Database the eds background worker connects to (where eds is installed).",
							   NULL, &eds_worker_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_sample_interval",
							"Seconds between two replication lag samples (and heartbeats).",
							NULL, &eds_lag_sample_interval, 10, 1, 3600,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_retention",
							"Days of replication lag history to keep.",
							NULL, &eds_lag_retention, 7, 1, 3650,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress || !eds_lag_worker_enabled)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = lag_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = lag_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* Consistent state, not recovery finished: it runs on standbys too. */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "eds", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "eds_lag_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "eds worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "eds worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}
