/*-------------------------------------------------------------------------
 *
 * worker_pool.c
 *		ETL workers that stay for the next run.
 *
 * Starting a background worker (fork, InitPostgres, catalog caches) and
 * logging in to the source cost more than a run that finds nothing to do.
 * So after a run the worker waits eds.etl_worker_idle seconds for another
 * one, keeping its source connection, and eds_run_etl() hands the next run
 * to such a worker of its database and role instead of starting one.
 *
 * The slots live in shared memory (eds preloaded); without it every run
 * starts its own worker, as it does when eds.etl_worker_idle = 0.  A slot
 * is written under its spinlock only: the worker publishes itself idle,
 * a caller puts a request token in it, the worker takes the token and
 * clears the slot.  A worker leaving on timeout does so under the same
 * lock, so a token once handed over is always run.  A worker started before
 * an ALTER DATABASE or ALTER ROLE ... SET that concerns it runs with the
 * old values, so it is used only while those settings are unchanged (their
 * digest is in the slot); the configuration files it re-reads on SIGHUP.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "eds.h"

/* Idle workers waiting at once, over all databases and roles. */
#define POOL_SLOTS 8

int			eds_etl_worker_idle = 60;	/* seconds, eds.etl_worker_idle */

typedef struct PoolSlot
{
	pid_t		worker_pid;		/* 0: free */
	Latch	   *worker_latch;
	Oid			database;
	Oid			role;
	char		settings[33];	/* md5 of the ALTER DATABASE/ROLE settings it started with */
	int64		token;			/* 0: waiting; else the run handed over */
	pid_t		caller_pid;		/* who to wake when that run has committed */
} PoolSlot;

typedef struct WorkerPool
{
	slock_t		mutex;
	PoolSlot	slots[POOL_SLOTS];
} WorkerPool;

static WorkerPool *pool = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
pool_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerPool)));
}

static void
pool_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pool = ShmemInitStruct("eds etl worker pool", sizeof(WorkerPool), &found);
	if (!found)
	{
		memset(pool, 0, sizeof(WorkerPool));
		SpinLockInit(&pool->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
eds_worker_pool_init(void)
{
	DefineCustomIntVariable("eds.etl_worker_idle",
							"Seconds an ETL worker waits for the next run, keeping its source connection (0: it ends after each run).",
							NULL,
							&eds_etl_worker_idle,
							60, 0, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pool_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pool_shmem_startup;
}

/*
 * The digest of the per-database and per-role settings that apply to this
 * database and role (what a new worker would start with).  In a
 * transaction; the text is palloc'd.
 */
char *
eds_worker_settings_digest(void)
{
	MemoryContext outer = CurrentMemoryContext;
	char		sql[512];
	char	   *digest = NULL;

	snprintf(sql, sizeof(sql),
			 "SELECT md5(coalesce(string_agg(setdatabase || '/' || setrole || '/' || "
			 "array_to_string(setconfig, E'\x1f'), E'\x1e' ORDER BY setdatabase, setrole), '')) "
			 "FROM pg_catalog.pg_db_role_setting WHERE setdatabase IN (0, %u) AND setrole IN (0, %u)",
			 MyDatabaseId, GetUserId());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			digest = MemoryContextStrdup(outer, v);
	}
	SPI_finish();
	return digest ? digest : pstrdup("");
}

/*
 * Caller side: give the run with this token to a waiting worker of this
 * database and role started with these settings.  Returns its pid, or 0
 * when none waits (then the caller starts a worker).
 */
pid_t
eds_worker_pool_hand_over(int64 token, const char *settings)
{
	pid_t		pid = 0;
	Latch	   *latch = NULL;

	if (pool == NULL)
		return 0;
	SpinLockAcquire(&pool->mutex);
	for (int i = 0; i < POOL_SLOTS; i++)
	{
		PoolSlot   *slot = &pool->slots[i];

		if (slot->worker_pid != 0 && slot->token == 0 &&
			slot->database == MyDatabaseId && slot->role == GetUserId() &&
			strcmp(slot->settings, settings) == 0)
		{
			slot->token = token;
			slot->caller_pid = MyProcPid;
			pid = slot->worker_pid;
			latch = slot->worker_latch;
			break;
		}
	}
	SpinLockRelease(&pool->mutex);
	if (latch)
		SetLatch(latch);
	return pid;
}

/*
 * DROP DATABASE: the workers waiting there would make it wait and fail;
 * they end (a run handed over is still run: its slot is no longer idle).
 */
void
eds_worker_pool_release_database(Oid database)
{
	pid_t		pids[POOL_SLOTS];
	int			n = 0;

	if (pool == NULL)
		return;
	SpinLockAcquire(&pool->mutex);
	for (int i = 0; i < POOL_SLOTS; i++)
	{
		if (pool->slots[i].worker_pid != 0 && pool->slots[i].token == 0 &&
			pool->slots[i].database == database)
			pids[n++] = pool->slots[i].worker_pid;
	}
	SpinLockRelease(&pool->mutex);
	for (int i = 0; i < n; i++)
		kill(pids[i], SIGTERM);
}

/* At exit (SIGTERM while waiting): give the slot back. */
static void
pool_leave(int code, Datum arg)
{
	SpinLockAcquire(&pool->mutex);
	for (int i = 0; i < POOL_SLOTS; i++)
	{
		if (pool->slots[i].worker_pid == MyProcPid)
		{
			pool->slots[i].worker_pid = 0;
			pool->slots[i].token = 0;
		}
	}
	SpinLockRelease(&pool->mutex);
}

/*
 * Worker side, after a run: wait up to eds.etl_worker_idle seconds for the
 * next one.  Returns true with its token and caller, or false when the
 * worker should end (no run came, no free slot, or the pool is off).
 */
bool
eds_worker_pool_wait(const char *settings, int64 *token, pid_t *caller_pid)
{
	static bool leave_registered = false;
	PoolSlot   *slot = NULL;
	TimestampTz until;
	bool		got = false;

	if (pool == NULL || eds_etl_worker_idle <= 0)
		return false;
	if (!leave_registered)
	{
		before_shmem_exit(pool_leave, (Datum) 0);
		leave_registered = true;
	}

	SpinLockAcquire(&pool->mutex);
	for (int i = 0; i < POOL_SLOTS; i++)
	{
		if (pool->slots[i].worker_pid == 0)
		{
			slot = &pool->slots[i];
			slot->worker_pid = MyProcPid;
			slot->worker_latch = MyLatch;
			slot->database = MyDatabaseId;
			slot->role = GetUserId();
			strlcpy(slot->settings, settings, sizeof(slot->settings));
			slot->token = 0;
			slot->caller_pid = 0;
			break;
		}
	}
	SpinLockRelease(&pool->mutex);
	if (slot == NULL)
		return false;

	pgstat_report_activity(STATE_IDLE, "eds ETL worker: waiting for the next run");

	/*
	 * A cancel (SIGINT) meant for a run handed over but not yet started is
	 * held here, and cancels that run at its first statement, which records
	 * it; SIGTERM still ends the worker at once.
	 */
	HOLD_CANCEL_INTERRUPTS();
	until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), eds_etl_worker_idle * 1000L);
	for (;;)
	{
		long		timeout_ms;

		ResetLatch(MyLatch);
		timeout_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until);
		SpinLockAcquire(&pool->mutex);
		if (slot->token != 0 || timeout_ms <= 0 || eds_etl_worker_idle <= 0)
		{
			/* Leaving, with a run or without: under the lock, so none is lost. */
			*token = slot->token;
			*caller_pid = slot->caller_pid;
			got = slot->token != 0;
			slot->worker_pid = 0;
			slot->token = 0;
			SpinLockRelease(&pool->mutex);
			break;
		}
		SpinLockRelease(&pool->mutex);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms, PG_WAIT_EXTENSION);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* SIGTERM (die) ends us here; pool_leave frees the slot. */
		CHECK_FOR_INTERRUPTS();
	}
	RESUME_CANCEL_INTERRUPTS();

	/* A late cancel of the run before (its caller gave up just after it committed) is not this run's. */
	if (got && QueryCancelPending && eds_progress_abandoned_why(*token) == NULL)
		QueryCancelPending = false;
	return got;
}

