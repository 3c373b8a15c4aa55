/*-------------------------------------------------------------------------
 *
 * continuous.c
 *		Continuous ETL: a worker per warehouse database runs windows back to
 *		back; a launcher starts it, restarts it, and brings it back after a
 *		server restart.
 *
 * eds_start_continuous() writes the wish into audit.etl_continuous.  When
 * its transaction commits (not before: the worker must see the row) it
 * marks the database wanted in shared memory and wakes the launcher, a
 * static background worker connected to no database, as pg_cron's is.  The
 * launcher starts a worker for each wanted database, as the role that
 * asked, and starts it again when it ends while still wanted, waiting
 * longer after each quick end.  At server start, and after a crash (which
 * empties shared memory), it learns which databases want one by starting a
 * short probe worker in each database in turn, which reads the table there.
 *
 * A worker runs eds_etl_run() windows: the next at once after one that
 * loaded something; after `every` when one found nothing or a call's run
 * held the lock; after a doubling back-off, capped by
 * eds.continuous_max_backoff, after a failure.  It re-reads the table
 * before each window, so a stop, a new pause, another role or a dropped
 * extension take effect between windows, never inside one.  DROP DATABASE
 * ends the worker first (a ProcessUtility hook), so it need not be FORCEd.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_start_continuous);
PG_FUNCTION_INFO_V1(eds_stop_continuous);
PGDLLEXPORT void eds_continuous_launcher_main(Datum main_arg);
PGDLLEXPORT void eds_continuous_worker_main(Datum main_arg);

/* Warehouse databases in continuous mode at once, per server. */
#define CONTINUOUS_SLOTS 16

/* A worker that ran this long before ending is restarted without delay. */
#define CONTINUOUS_STABLE_MS (60 * 1000)

int			eds_continuous_max_backoff = 60;	/* seconds */

typedef struct ContinuousSlot
{
	Oid			database;		/* InvalidOid: free */
	Oid			role;			/* who its worker runs as */
	bool		wanted;			/* continuous mode is on there */
	pid_t		worker_pid;		/* its worker, while it runs */
	Latch	   *worker_latch;
} ContinuousSlot;

typedef struct ContinuousShared
{
	slock_t		mutex;
	Latch	   *launcher_latch; /* NULL while no launcher runs */
	ContinuousSlot slots[CONTINUOUS_SLOTS];
} ContinuousShared;

/* What a worker is started for (bgw_extra). */
typedef struct ContinuousWorkerArgs
{
	Oid			database;
	Oid			role;
	bool		probe;			/* only find out whether the database wants a worker */
} ContinuousWorkerArgs;

static ContinuousShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* ---------------------------------------------------------------- shared memory */

static void
continuous_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(ContinuousShared)));
}

static void
continuous_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("eds continuous ETL", sizeof(ContinuousShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(ContinuousShared));
		SpinLockInit(&shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The slot of a database, or a free one to take for it; under the mutex. */
static ContinuousSlot *
continuous_slot(Oid database, bool take)
{
	ContinuousSlot *free_slot = NULL;

	for (int i = 0; i < CONTINUOUS_SLOTS; i++)
	{
		ContinuousSlot *slot = &shared->slots[i];

		if (slot->database == database)
			return slot;
		if (free_slot == NULL && slot->database == InvalidOid)
			free_slot = slot;
	}
	if (take && free_slot)
	{
		memset(free_slot, 0, sizeof(ContinuousSlot));
		free_slot->database = database;
	}
	return take ? free_slot : NULL;
}

/*
 * Say whether a database wants its worker, and wake who must act: the
 * launcher to start one, the worker to re-read the table.  Returns false
 * when every slot is taken.
 */
static bool
continuous_set_wanted(Oid database, Oid role, bool wanted)
{
	ContinuousSlot *slot;
	Latch	   *worker_latch = NULL;
	Latch	   *launcher_latch;

	SpinLockAcquire(&shared->mutex);
	slot = continuous_slot(database, wanted);
	if (slot)
	{
		slot->wanted = wanted;
		if (wanted)
			slot->role = role;
		if (slot->worker_pid != 0)
			worker_latch = slot->worker_latch;
	}
	launcher_latch = shared->launcher_latch;
	SpinLockRelease(&shared->mutex);
	if (worker_latch)
		SetLatch(worker_latch);
	if (launcher_latch)
		SetLatch(launcher_latch);
	return slot != NULL || !wanted;
}

/*
 * DROP DATABASE: the worker must go first, and must not come back.  A pooled
 * ETL worker waiting there is sent away too.
 */
void
eds_continuous_forget_database(Oid database)
{
	ContinuousSlot *slot;
	pid_t		pid = 0;

	if (shared == NULL)
		return;
	SpinLockAcquire(&shared->mutex);
	slot = continuous_slot(database, false);
	if (slot)
	{
		slot->wanted = false;
		pid = slot->worker_pid;
	}
	SpinLockRelease(&shared->mutex);
	if (pid != 0)
		kill(pid, SIGTERM);
}

/* ---------------------------------------------------------------- start and stop */

/* A start or stop waits for its transaction's commit before it is told. */
static bool pending_change = false;
static bool pending_wanted;
static Oid	pending_role;

static void
continuous_xact_callback(XactEvent event, void *arg)
{
	if (!pending_change)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		if (!continuous_set_wanted(MyDatabaseId, pending_role, pending_wanted))
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("continuous ETL is on in more than %d databases of this server: no worker for this one",
							CONTINUOUS_SLOTS),
					 errhint("Stop continuous mode in another database; this one then starts at the next server start.")));
		pending_change = false;
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PREPARE)
		pending_change = false; /* a prepared one is seen at the next server start */
}

static void
continuous_require_launcher(void)
{
	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("continuous ETL needs eds in shared_preload_libraries"),
				 errhint("Add eds to shared_preload_libraries and restart the server; until then schedule "
						 "eds_run_etl() with SELECT eds_schedule_etl().")));
}

/* Write the control row as its owner: EXECUTE on the function is the right needed. */
static char *
continuous_update_control(const char *sql, int nargs, Oid *types, Datum *values)
{
	Oid			save_userid;
	int			save_sec_context;
	Oid			owner = eds_relation_owner("audit", "etl_continuous");
	char	   *result = NULL;
	MemoryContext outer = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not update audit.etl_continuous");
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			result = MemoryContextStrdup(outer, v);
	}
	SPI_finish();
	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("audit.etl_continuous has no row"),
				 errhint("Restore it with INSERT INTO audit.etl_continuous DEFAULT VALUES.")));
	return result;
}

static void
continuous_announce(bool wanted)
{
	static bool callback_registered = false;

	if (!callback_registered)
	{
		RegisterXactCallback(continuous_xact_callback, NULL);
		callback_registered = true;
	}
	pending_change = true;
	pending_wanted = wanted;
	pending_role = GetUserId();
}

Datum
eds_start_continuous(PG_FUNCTION_ARGS)
{
	Interval   *every = PG_GETARG_INTERVAL_P(0);
	Oid			types[2] = {INTERVALOID, NAMEOID};
	Datum		values[2];
	char	   *text;

	continuous_require_launcher();
	if (every->month != 0 || every->day != 0 ||
		every->time < 100 * INT64CONST(1000) || every->time > USECS_PER_HOUR)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("eds_start_continuous(every => %s): the pause must be between 100 milliseconds and 1 hour",
						DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(every)))),
				 errdetail("It is how long the worker waits after a window that found nothing to load."),
				 errhint("For example SELECT eds_start_continuous('1 second'); for less frequent loads use eds_schedule_etl().")));
	if (!eds_remote_server_exists("eds_source"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no ETL source is declared in this database"),
				 errhint("Declare it first with SELECT eds_set_source('host=... port=... dbname=... user=... password=...').")));

	values[0] = IntervalPGetDatum(every);
	values[1] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetUserId(), false)));
	text = continuous_update_control(
		"UPDATE audit.etl_continuous c SET enabled = true, every = $1, run_as = $2, "
		"  started_at = CASE WHEN o.enabled THEN o.started_at ELSE now() END, stopped_at = NULL "
		"  FROM (SELECT enabled, started_at FROM audit.etl_continuous FOR UPDATE) o "
		"RETURNING CASE WHEN o.enabled THEN 'continuous ETL was on; now pausing ' || c.every || "
		"  ' after an empty window, as ' || c.run_as "
		"  ELSE 'continuous ETL on: windows back to back, pausing ' || c.every || "
		"  ' after an empty window, as ' || c.run_as END",
		2, types, values);
	continuous_announce(true);
	PG_RETURN_TEXT_P(cstring_to_text(text));
}

Datum
eds_stop_continuous(PG_FUNCTION_ARGS)
{
	char	   *text;

	continuous_require_launcher();
	text = continuous_update_control(
		"UPDATE audit.etl_continuous c SET enabled = false, "
		"  stopped_at = CASE WHEN o.enabled THEN now() ELSE o.stopped_at END "
		"  FROM (SELECT enabled, stopped_at FROM audit.etl_continuous FOR UPDATE) o "
		"RETURNING CASE WHEN o.enabled THEN 'continuous ETL off: the window in progress finishes, no new one starts' "
		"  ELSE 'continuous ETL was not on' END",
		0, NULL, NULL);
	continuous_announce(false);
	PG_RETURN_TEXT_P(cstring_to_text(text));
}

/* ---------------------------------------------------------------- the worker */

/* What audit.etl_continuous says, as the worker reads it before each window. */
typedef enum ControlState
{
	CONTROL_RUN,
	CONTROL_OFF,				/* continuous mode is off, or eds is gone */
	CONTROL_RESTART,			/* another role, or new database/role settings: the launcher starts us again */
	CONTROL_WAIT				/* eds here is not this library's version yet */
} ControlState;

static ControlState
continuous_read_control(const char *settings, long *every_ms, Oid *run_as)
{
	ControlState state = CONTROL_OFF;
	MemoryContext outer = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eds'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		char	   *version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		state = CONTROL_WAIT;
		if (strcmp(version, EDS_VERSION) == 0 &&
			SPI_execute("SELECT enabled, (extract(epoch FROM every) * 1000)::bigint, "
						"(SELECT oid FROM pg_catalog.pg_roles WHERE rolname = run_as) "
						"FROM audit.etl_continuous", true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			bool		enabled = DatumGetBool(SPI_getbinval(row, desc, 1, &isnull));

			*every_ms = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
			*run_as = DatumGetObjectId(SPI_getbinval(row, desc, 3, &isnull));
			if (isnull)
				*run_as = InvalidOid;
			state = !enabled ? CONTROL_OFF : CONTROL_RUN;
		}
	}
	SPI_finish();
	if (state == CONTROL_RUN && settings)
	{
		char	   *now_settings = eds_worker_settings_digest();

		if (*run_as != GetUserId() || strcmp(now_settings, settings) != 0)
			state = CONTROL_RESTART;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(outer);
	return state;
}

static void
continuous_worker_leave(int code, Datum arg)
{
	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < CONTINUOUS_SLOTS; i++)
	{
		if (shared->slots[i].worker_pid == MyProcPid)
		{
			shared->slots[i].worker_pid = 0;
			shared->slots[i].worker_latch = NULL;
		}
	}
	SpinLockRelease(&shared->mutex);
}

/* Take our database's slot; false when another worker has it or nobody wants us. */
static bool
continuous_worker_enter(void)
{
	ContinuousSlot *slot;
	bool		entered = false;

	SpinLockAcquire(&shared->mutex);
	slot = continuous_slot(MyDatabaseId, false);
	if (slot && slot->wanted && slot->worker_pid == 0)
	{
		slot->worker_pid = MyProcPid;
		slot->worker_latch = MyLatch;
		entered = true;
	}
	SpinLockRelease(&shared->mutex);
	if (entered)
		before_shmem_exit(continuous_worker_leave, (Datum) 0);
	return entered;
}

/* Probe: does this database want continuous mode, and as whom?  Then end. */
static void
continuous_probe(void)
{
	long		every_ms;
	Oid			run_as = InvalidOid;

	if (continuous_read_control(NULL, &every_ms, &run_as) != CONTROL_RUN)
		return;
	if (!OidIsValid(run_as))
	{
		ereport(LOG,
				(errmsg("eds continuous ETL in database %u is on, but the role it runs as no longer exists: not started",
						MyDatabaseId),
				 errhint("Run SELECT eds_start_continuous() again there as the role the ETL should use.")));
		return;
	}
	(void) continuous_set_wanted(MyDatabaseId, run_as, true);
}

/* Wait on our latch up to ms, then take what signals asked. */
static void
continuous_sleep(long ms)
{
	if (ms > 0)
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

void
eds_continuous_worker_main(Datum main_arg)
{
	ContinuousWorkerArgs args;
	char	   *settings;
	int			failures = 0;
	bool		told_wait = false;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	pqsignal(SIGINT, StatementCancelHandler);
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(args.database, args.role, 0);
	pgstat_report_appname(args.probe ? "eds continuous probe" : "eds continuous");
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	if (args.probe)
	{
		continuous_probe();
		proc_exit(0);
	}
	if (!continuous_worker_enter())
		proc_exit(0);

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	settings = MemoryContextStrdup(TopMemoryContext, eds_worker_settings_digest());
	PopActiveSnapshot();
	CommitTransactionCommand();
	ereport(LOG, (errmsg("eds continuous ETL started in database %u", MyDatabaseId)));

	for (;;)
	{
		long		every_ms = 1000;
		Oid			run_as = InvalidOid;
		long		pause_ms;
		ControlState state;
		EtlOutcome	outcome;
		MemoryContext windowcxt;

		pgstat_report_activity(STATE_RUNNING, "eds continuous ETL: reading audit.etl_continuous");
		state = continuous_read_control(settings, &every_ms, &run_as);
		if (state == CONTROL_OFF)
		{
			/* Stopped, or eds dropped: the launcher must not start us again. */
			(void) continuous_set_wanted(MyDatabaseId, InvalidOid, false);
			ereport(LOG, (errmsg("eds continuous ETL stopped in database %u", MyDatabaseId)));
			break;
		}
		if (state == CONTROL_RESTART)
			break;
		if (state == CONTROL_WAIT)
		{
			if (!told_wait)
				ereport(LOG,
						(errmsg("eds continuous ETL in database %u waits: eds there is not version %s",
								MyDatabaseId, EDS_VERSION),
						 errhint("Run ALTER EXTENSION eds UPDATE in that database.")));
			told_wait = true;
			pgstat_report_activity(STATE_IDLE, "eds continuous ETL: waiting for ALTER EXTENSION eds UPDATE");
			continuous_sleep(10 * 1000L);
			continue;
		}
		told_wait = false;

		windowcxt = AllocSetContextCreate(TopMemoryContext, "eds continuous window", ALLOCSET_DEFAULT_SIZES);
		MemoryContextSwitchTo(windowcxt);
		outcome = eds_etl_run(0, 0, ETL_CONTINUOUS);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextDelete(windowcxt);
		pgstat_report_stat(false);

		switch (outcome)
		{
			case ETL_LOADED:
				pause_ms = 0;	/* changes keep coming: the next window at once */
				failures = 0;
				break;
			case ETL_FAILED:
				/* Back off, doubling from the pause (at least a second), capped. */
				failures = Min(failures + 1, 30);
				pause_ms = Min((long) Max(every_ms, 1000L) << Min(failures - 1, 20),
							   eds_continuous_max_backoff * 1000L);
				break;
			default:
				pause_ms = every_ms;
				failures = 0;
				break;
		}
		pgstat_report_activity(STATE_IDLE, "eds continuous ETL: waiting for the next window");
		continuous_sleep(pause_ms);
	}
	eds_remote_disconnect();
	proc_exit(0);
}

/* ---------------------------------------------------------------- the launcher */

/* The databases a worker could connect to. */
static List *
continuous_databases(void)
{
	List	   *databases = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext outer = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext txcxt = MemoryContextSwitchTo(outer);

			databases = lappend_oid(databases, db->oid);
			MemoryContextSwitchTo(txcxt);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(outer);
	return databases;
}

static BackgroundWorkerHandle *
continuous_start_worker(Oid database, Oid role, bool probe)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	ContinuousWorkerArgs args = {database, role, probe};

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher decides */
	strlcpy(worker.bgw_library_name, "eds", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "eds_continuous_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "eds continuous %s, database %u", probe ? "probe" : "ETL", database);
	strlcpy(worker.bgw_type, probe ? "eds continuous probe" : "eds continuous", BGW_MAXLEN);
	memcpy(worker.bgw_extra, &args, sizeof(args));
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		return NULL;
	return handle;
}

/* At start: ask each database, one at a time, whether it wants a worker. */
static bool
continuous_probe_databases(void)
{
	List	   *databases = continuous_databases();
	ListCell   *lc;

	foreach(lc, databases)
	{
		BackgroundWorkerHandle *handle = continuous_start_worker(lfirst_oid(lc), InvalidOid, true);

		if (handle == NULL)
		{
			ereport(WARNING,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("eds continuous launcher: no background worker slot to look for continuous mode; trying again"),
					 errhint("Raise max_worker_processes.")));
			return false;
		}
		if (WaitForBackgroundWorkerShutdown(handle) == BGWH_POSTMASTER_DIED)
			proc_exit(1);
		pfree(handle);
	}
	list_free(databases);
	return true;
}

/* What the launcher keeps of each slot's worker. */
typedef struct LaunchedWorker
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz retry_at;
	long		backoff_ms;
} LaunchedWorker;

static void
continuous_launch(LaunchedWorker *launched)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < CONTINUOUS_SLOTS; i++)
	{
		LaunchedWorker *lw = &launched[i];
		ContinuousSlot slot;
		pid_t		pid;

		SpinLockAcquire(&shared->mutex);
		slot = shared->slots[i];
		SpinLockRelease(&shared->mutex);

		if (lw->handle && GetBackgroundWorkerPid(lw->handle, &pid) == BGWH_STOPPED)
		{
			/* It ended: soon again if it ran a while, later after each quick end. */
			pfree(lw->handle);
			lw->handle = NULL;
			if (TimestampDifferenceExceeds(lw->started_at, now, CONTINUOUS_STABLE_MS))
				lw->backoff_ms = 1000;
			else
				lw->backoff_ms = Min(Max(lw->backoff_ms * 2, 1000), eds_continuous_max_backoff * 1000L);
			lw->retry_at = TimestampTzPlusMilliseconds(now, lw->backoff_ms);
			if (slot.wanted && !list_member_oid(continuous_databases(), slot.database))
			{
				/* Dropped (WITH FORCE, or behind our back): nothing to come back to. */
				SpinLockAcquire(&shared->mutex);
				shared->slots[i].wanted = false;
				SpinLockRelease(&shared->mutex);
				slot.wanted = false;
			}
		}
		if (lw->handle == NULL && slot.database != InvalidOid)
		{
			if (!slot.wanted)
			{
				SpinLockAcquire(&shared->mutex);
				if (!shared->slots[i].wanted && shared->slots[i].worker_pid == 0)
					shared->slots[i].database = InvalidOid;
				SpinLockRelease(&shared->mutex);
				lw->backoff_ms = 0;
				lw->retry_at = 0;
			}
			else if (now >= lw->retry_at)
			{
				lw->handle = continuous_start_worker(slot.database, slot.role, false);
				lw->started_at = now;
				if (lw->handle == NULL)
					lw->retry_at = TimestampTzPlusMilliseconds(now, 10 * 1000L);
			}
		}
	}
}

static void
continuous_launcher_leave(int code, Datum arg)
{
	SpinLockAcquire(&shared->mutex);
	shared->launcher_latch = NULL;
	SpinLockRelease(&shared->mutex);
}

void
eds_continuous_launcher_main(Datum main_arg)
{
	LaunchedWorker launched[CONTINUOUS_SLOTS];
	bool		probed = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	memset(launched, 0, sizeof(launched));
	SpinLockAcquire(&shared->mutex);
	shared->launcher_latch = MyLatch;
	SpinLockRelease(&shared->mutex);
	before_shmem_exit(continuous_launcher_leave, (Datum) 0);

	for (;;)
	{
		if (!probed)
			probed = continuous_probe_databases();
		continuous_launch(launched);
		continuous_sleep(probed ? 1000L : 10 * 1000L);
	}
}

/* ---------------------------------------------------------------- DROP DATABASE */

static void
continuous_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						   ProcessUtilityContext context, ParamListInfo params,
						   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	volatile Oid dropped = InvalidOid;
	volatile Oid role = InvalidOid;
	volatile bool was_wanted = false;

	/* Only for one who may drop it: anybody else's DROP fails anyway. */
	if (shared && IsA(parsetree, DropdbStmt))
	{
		dropped = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);
		if (OidIsValid(dropped) && pg_database_ownercheck(dropped, GetUserId()))
		{
			ContinuousSlot *slot;

			SpinLockAcquire(&shared->mutex);
			slot = continuous_slot(dropped, false);
			if (slot)
			{
				was_wanted = slot->wanted;
				role = slot->role;
			}
			SpinLockRelease(&shared->mutex);
			eds_continuous_forget_database(dropped);
			eds_worker_pool_release_database(dropped);
		}
		else
			dropped = InvalidOid;
	}

	PG_TRY();
	{
		if (prev_process_utility_hook)
			prev_process_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		/* The database stays: so does its continuous mode. */
		if (OidIsValid(dropped) && was_wanted)
			(void) continuous_set_wanted(dropped, role, true);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* ---------------------------------------------------------------- setup */

void
eds_continuous_init(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("eds.continuous_max_backoff",
							"Longest pause, in seconds, between continuous ETL windows that fail (the pause doubles from a second).",
							NULL,
							&eds_continuous_max_backoff,
							60, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = continuous_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = continuous_shmem_startup;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = continuous_process_utility;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "eds", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "eds_continuous_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "eds continuous launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "eds continuous launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}
