/*-------------------------------------------------------------------------
 *
 * progress.c
 *		What the running ETL is doing, for audit.etl_progress.
 *
 * The run's work happens in one transaction, so its progress cannot be
 * committed to a table; it lives in a small shared-memory slot instead,
 * written by the worker and read by eds_etl_progress().  Runs are one at a
 * time, so one slot is enough.  Needs eds in shared_preload_libraries; when
 * it is not preloaded the view is simply empty.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "eds.h"

typedef struct EdsProgress
{
	slock_t		mutex;
	int			pid;			/* 0: no run */
	int64		run_id;
	char		phase[32];
	char		table[32];
	int64		rows_done;
	TimestampTz phase_started;
	TimestampTz run_started;
	int64		committed_token;	/* the last run whose result is committed */
	int64		abandoned_token;	/* the last run whose caller stopped waiting */
	char		abandoned_why[128]; /* the caller's error, e.g. a statement timeout */
} EdsProgress;

static EdsProgress *progress = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(eds_etl_progress);

static void
progress_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EdsProgress)));
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	progress = ShmemInitStruct("eds etl progress", sizeof(EdsProgress), &found);
	if (!found)
	{
		memset(progress, 0, sizeof(EdsProgress));
		SpinLockInit(&progress->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
eds_progress_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = progress_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = progress_shmem_startup;
}

void
eds_progress_start(int64 run_id)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	progress->pid = MyProcPid;
	progress->run_id = run_id;
	progress->phase[0] = progress->table[0] = '\0';
	progress->rows_done = 0;
	progress->run_started = progress->phase_started = GetCurrentTimestamp();
	SpinLockRelease(&progress->mutex);
}

void
eds_progress_phase(const char *phase, const char *table)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	strlcpy(progress->phase, phase, sizeof(progress->phase));
	strlcpy(progress->table, table ? table : "", sizeof(progress->table));
	progress->rows_done = 0;
	progress->phase_started = GetCurrentTimestamp();
	SpinLockRelease(&progress->mutex);
}

void
eds_progress_rows(int64 rows)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	progress->rows_done = rows;
	SpinLockRelease(&progress->mutex);
}

void
eds_progress_end(void)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	if (progress->pid == MyProcPid)
		progress->pid = 0;
	SpinLockRelease(&progress->mutex);
}

/*
 * The run asked for with this token has committed its result: its caller
 * may return while the worker finishes its housekeeping.
 */
void
eds_progress_committed(int64 token)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	progress->committed_token = token;
	SpinLockRelease(&progress->mutex);
}

bool
eds_progress_is_committed(int64 token)
{
	bool		committed;

	if (!progress)
		return false;
	SpinLockAcquire(&progress->mutex);
	committed = (progress->committed_token == token);
	SpinLockRelease(&progress->mutex);
	return committed;
}

/*
 * The caller of the run with this token stopped waiting (cancel, statement
 * timeout, lost connection): say why, so the worker, which only sees a
 * cancel, records the real cause.
 */
void
eds_progress_abandoned(int64 token, const char *why)
{
	if (!progress)
		return;
	SpinLockAcquire(&progress->mutex);
	progress->abandoned_token = token;
	strlcpy(progress->abandoned_why, why, sizeof(progress->abandoned_why));
	SpinLockRelease(&progress->mutex);
}

/* Why the caller of this run stopped waiting, or NULL if it did not. */
char *
eds_progress_abandoned_why(int64 token)
{
	char	   *why = NULL;

	if (!progress)
		return NULL;
	SpinLockAcquire(&progress->mutex);
	if (progress->abandoned_token == token)
		why = pstrdup(progress->abandoned_why);
	SpinLockRelease(&progress->mutex);
	return why;
}

Datum
eds_etl_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EdsProgress snap;
	Datum		values[7];
	bool		nulls[7] = {false};

	InitMaterializedSRF(fcinfo, 0);
	if (!progress)
		return (Datum) 0;

	SpinLockAcquire(&progress->mutex);
	memcpy(&snap, progress, sizeof(snap));
	SpinLockRelease(&progress->mutex);

	/* A worker that died without clearing its slot is not running. */
	if (snap.pid == 0 || (kill(snap.pid, 0) != 0 && errno == ESRCH))
		return (Datum) 0;

	values[0] = Int32GetDatum(snap.pid);
	values[1] = Int64GetDatum(snap.run_id);
	values[2] = CStringGetTextDatum(snap.phase);
	values[3] = CStringGetTextDatum(snap.table);
	nulls[3] = (snap.table[0] == '\0');
	values[4] = Int64GetDatum(snap.rows_done);
	values[5] = TimestampTzGetDatum(snap.phase_started);
	values[6] = TimestampTzGetDatum(snap.run_started);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
