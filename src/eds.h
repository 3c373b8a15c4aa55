/*-------------------------------------------------------------------------
 *
 * eds.h
 *		Declarations shared between the C files of the eds extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EDS_H
#define EDS_H

#include "postgres.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

#include "compat.h"

/* The version of the SQL objects this library serves (eds.control). */
#define EDS_VERSION "1.1"

/* settings (eds.c) */
extern char *eds_actor;
extern bool eds_allow_drop_with_data;

/* row_jsonb.c: a heap tuple as a jsonb object, attribute name -> value */
extern Jsonb *eds_tuple_to_jsonb(HeapTuple tuple, TupleDesc tupdesc);

/* util.c */
#include "executor/spi.h"
extern Oid	eds_relation_owner(const char *nspname, const char *relname);
extern AttrNumber eds_primary_key_attnum(Relation rel);
extern void eds_insert_as_owner(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes,
								Datum *values, const char *nulls, Oid owner);

/* remote.c: the ETL source over libpq */
#include "libpq-fe.h"
extern int	eds_source_timeout;
extern int	eds_source_connect_timeout;
extern PGconn *eds_remote_connect(void);
extern PGconn *eds_remote_connect_to(const char *servername);
extern bool eds_remote_server_exists(const char *servername);
extern void eds_remote_disconnect(void);
extern char *eds_remote_describe(void);
extern PGresult *eds_remote_exec(const char *sql, ExecStatusType expected, const char *what);
extern int	eds_remote_copy_read(void *outbuf, int minread, int maxread);

/* progress.c: what the running ETL is doing, in shared memory */
extern void eds_progress_init(void);
extern void eds_progress_start(int64 run_id);
extern void eds_progress_phase(const char *phase, const char *table);
extern void eds_progress_rows(int64 rows);
extern void eds_progress_end(void);
extern void eds_progress_committed(int64 token);
extern bool eds_progress_is_committed(int64 token);
extern void eds_progress_abandoned(int64 token, const char *why);
extern char *eds_progress_abandoned_why(int64 token);

/* etl.c: one run, inside the worker */
extern int	eds_etl_run_retention;
extern int	eds_max_source_lag;
typedef enum EtlOrigin
{
	ETL_CALLED,					/* eds_run_etl(), by hand or from pg_cron */
	ETL_CONTINUOUS				/* a window of continuous mode */
} EtlOrigin;
typedef enum EtlOutcome
{
	ETL_LOADED,					/* committed, and recorded in audit.etl_runs */
	ETL_EMPTY,					/* a continuous window that found nothing: not recorded */
	ETL_BUSY,					/* another run held the lock */
	ETL_FAILED					/* recorded as failed */
} EtlOutcome;
extern EtlOutcome eds_etl_run(int64 token, pid_t caller_pid, EtlOrigin origin);

/* worker_pool.c: ETL workers that wait for the next run */
extern int	eds_etl_worker_idle;
extern void eds_worker_pool_init(void);
extern char *eds_worker_settings_digest(void);
extern pid_t eds_worker_pool_hand_over(int64 token, const char *settings);
extern bool eds_worker_pool_wait(const char *settings, int64 *token, pid_t *caller_pid);
extern void eds_worker_pool_release_database(Oid database);

/* continuous.c: continuous mode's launcher and workers */
extern void eds_continuous_init(void);
extern void eds_continuous_forget_database(Oid database);

/* lagworker.c */
extern void eds_lag_worker_init(void);

/* drop_guard.c */
extern void eds_drop_guard_init(void);

#endif							/* EDS_H */
