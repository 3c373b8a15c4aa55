/*-------------------------------------------------------------------------
 *
 * worker.c
 *		eds_run_etl(): start the ETL background worker and wait for its run.
 *
 * The run happens in a dynamic background worker so that it owns its
 * transactions: it commits the 'running' row, the load, and (after an
 * abort) the failure, none of which a function inside the caller's
 * transaction could do.  The caller waits until the run has committed (the
 * worker says so in shared memory and sets the caller's latch) or the
 * worker has ended; the worker's housekeeping after the commit goes on
 * without the caller.  A worker then waits a while for the next run
 * (worker_pool.c): the caller hands its run to such a worker when one of
 * its database and role waits, and starts one otherwise.  If the caller is cancelled it cancels the worker
 * (SIGINT), which then records the run as failed.  The
 * worker connects to the caller's database as the caller's role, so the
 * user mapping used is the caller's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/procarray.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_run_etl);
PGDLLEXPORT void eds_etl_worker_main(Datum main_arg);

typedef struct EtlWorkerArgs
{
	Oid			database;
	Oid			role;
} EtlWorkerArgs;

void
eds_etl_worker_main(Datum main_arg)
{
	EtlWorkerArgs args;
	int64		token = DatumGetInt64(main_arg);
	pid_t		caller_pid = MyBgworkerEntry->bgw_notify_pid;
	char	   *settings;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));

	/* SIGINT cancels the running statement (an ERROR we record); SIGTERM ends us. */
	pqsignal(SIGINT, StatementCancelHandler);
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(args.database, args.role, 0);
	pgstat_report_appname("eds etl");

	/* Our SQL names its schemas; nothing in public may capture a call. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/* The settings this worker starts with, as a waiting worker must match. */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	settings = MemoryContextStrdup(TopMemoryContext, eds_worker_settings_digest());
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* Each run in its own memory, so a worker that stays does not grow. */
	do
	{
		MemoryContext runcxt = AllocSetContextCreate(TopMemoryContext, "eds ETL run",
													 ALLOCSET_DEFAULT_SIZES);

		MemoryContextSwitchTo(runcxt);
		(void) eds_etl_run(token, caller_pid, ETL_CALLED);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextDelete(runcxt);
	} while (eds_worker_pool_wait(settings, &token, &caller_pid));

	eds_remote_disconnect();
	proc_exit(0);
}

/*
 * The library serves one version of the SQL objects: a database still on an
 * older one (a new library installed, ALTER EXTENSION not yet run) would
 * fail mid-run on a missing column; say what to do instead.
 */
static void
etl_require_current_schema(void)
{
	char	   *version = NULL;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eds'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (version == NULL || strcmp(version, EDS_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eds in this database is version %s, its library is %s", version ? version : "?", EDS_VERSION),
				 errhint("Run ALTER EXTENSION eds UPDATE in this database (and on the source primary).")));
	SPI_finish();
}

Datum
eds_run_etl(PG_FUNCTION_ARGS)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle = NULL;
	BgwHandleStatus status = BGWH_STARTED;
	EtlWorkerArgs args;
	pid_t		pid = 0;
	int64		token;
	TupleDesc	tupdesc;
	Datum		result;
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	MemoryContext callercxt = CurrentMemoryContext;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "eds_run_etl must return a row");

	/* The run commits in another process; a transaction snapshot would not see it. */
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("eds_run_etl() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("The run commits in its own worker; this transaction's snapshot could not see the result."),
				 errhint("Call it in READ COMMITTED, the default, for example outside an explicit transaction block.")));

	etl_require_current_schema();

	/* The worker finds its run row by this token. */
	if (!pg_strong_random(&token, sizeof(token)))
		elog(ERROR, "could not generate a random token");
	token &= PG_INT64_MAX;

	{
		char	   *settings = eds_worker_settings_digest();

		pid = eds_worker_pool_hand_over(token, settings);
		pfree(settings);
	}
	if (pid == 0)
	{
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = BGW_NEVER_RESTART;
		strlcpy(worker.bgw_library_name, "eds", BGW_MAXLEN);
		strlcpy(worker.bgw_function_name, "eds_etl_worker_main", BGW_MAXLEN);
		strlcpy(worker.bgw_name, "eds ETL worker", BGW_MAXLEN);
		strlcpy(worker.bgw_type, "eds etl", BGW_MAXLEN);
		worker.bgw_main_arg = Int64GetDatum(token);
		args.database = MyDatabaseId;
		args.role = GetUserId();
		memcpy(worker.bgw_extra, &args, sizeof(args));
		worker.bgw_notify_pid = MyProcPid;

		if (!RegisterDynamicBackgroundWorker(&worker, &handle))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("could not start the eds ETL worker"),
					 errhint("All background worker slots are in use; raise max_worker_processes.")));

		status = WaitForBackgroundWorkerStartup(handle, &pid);
		if (status == BGWH_POSTMASTER_DIED)
			ereport(ERROR,
					(errcode(ERRCODE_ADMIN_SHUTDOWN),
					 errmsg("the server stopped before the ETL worker started")));
	}

	/* Our cancel stops the worker too, which then records the failure. */
	PG_TRY();
	{
		/*
		 * Wait until the run's result is committed (the worker then goes on
		 * with housekeeping we need not wait for) or the worker has ended.
		 * A worker we handed the run to is watched through its process.
		 */
		while (status == BGWH_STARTED && !eds_progress_is_committed(token))
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 100L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (handle)
				status = GetBackgroundWorkerPid(handle, &pid);
			else if (BackendPidGetProc(pid) == NULL)
				status = BGWH_STOPPED;
		}
	}
	PG_CATCH();
	{
		MemoryContext errcxt = MemoryContextSwitchTo(callercxt);
		ErrorData  *edata = CopyErrorData();

		MemoryContextSwitchTo(errcxt);
		eds_progress_abandoned(token, edata->message);
		if (pid > 0)
			kill(pid, SIGINT);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (status == BGWH_POSTMASTER_DIED)
		ereport(ERROR,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("the server stopped during the ETL run")));

	/* Not read-only: that takes a fresh snapshot, which sees the worker's rows. */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	values[0] = Int64GetDatum(token);
	if (SPI_execute_with_args("SELECT run_id, status, mode, rows_read, rows_inserted, rows_updated, "
							  "rows_deleted, rows_rejected, run_finished_at - run_started_at, "
							  "from_txid, to_txid, source_lsn, source_time, table_counts, error_message "
							  "FROM audit.etl_runs WHERE request_token = $1",
							  1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the ETL run row");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the ETL worker ended without recording its run"),
				 errhint("See the server log around this time; the worker may have been terminated.")));

	/*
	 * A failed run is an error for the caller too (pg_cron then records the
	 * job as failed); the run row with the details is already committed.
	 */
	{
		bool		isnull;
		char	   *run_status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		if (strcmp(run_status, "failed") == 0)
		{
			int64		run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc, 1, &isnull));
			char	   *message = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 15);
			char	   *detail = NULL;

			values[0] = Int64GetDatum(run_id);
			if (SPI_execute_with_args("SELECT error_detail FROM audit.etl_runs WHERE run_id = $1",
									  1, argtypes, values, NULL, false, 1) == SPI_OK_SELECT &&
				SPI_processed == 1)
				detail = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			ereport(ERROR,
					(errcode(ERRCODE_SQL_ROUTINE_EXCEPTION),
					 errmsg("ETL run " INT64_FORMAT " failed: %s", run_id, message ? message : "unknown error"),
					 detail ? errdetail_internal("%s", detail) : 0,
					 errhint("The run is recorded in audit.etl_runs (error_message, error_detail); "
							 "the warehouse is unchanged and the next run retries the same changes.")));
		}
	}
	result = PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], tupdesc));
	SPI_finish();
	PG_RETURN_DATUM(result);
}
