/*-------------------------------------------------------------------------
 *
 * eds.c
 *		Module entry point: settings and the initialisation of each part.
 *
 * eds works best preloaded (shared_preload_libraries = 'pg_cron,eds'),
 * which is what arms the DROP EXTENSION guard in every backend.  It must
 * still load without preloading, because its trigger functions load the
 * library on first use; so _PG_init never raises an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "eds.h"

PG_MODULE_MAGIC;

/* Who the audit trail names as actor; set per transaction by the app. */
char	   *eds_actor = NULL;

/* Escape hatch for dropping eds while its tables still hold rows. */
bool		eds_allow_drop_with_data = false;

/* eds_health() thresholds and expectations. */
static char *eds_expected_replicas = NULL;
static int	eds_lag_warn_bytes;
static int	eds_lag_critical_bytes;
static int	eds_lag_warn_seconds;
static int	eds_lag_critical_seconds;
static int	eds_etl_max_age;
static int	eds_etl_stall_warn;
static int	eds_etl_freshness_warn;
static int	eds_etl_freshness_critical;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomStringVariable("eds.actor",
							   "Name of the person or service behind the current transaction, for the audit trail.",
							   "Behind a transaction-pooling PgBouncer set it with SET LOCAL; "
							   "when empty the audit trail records session_user.",
							   &eds_actor,
							   "",
							   PGC_USERSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("eds.allow_drop_with_data",
							 "Allows DROP EXTENSION eds (or a cascading drop) to delete eds tables that hold rows.",
							 NULL,
							 &eds_allow_drop_with_data,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	/* Thresholds read by eds_health(); plain numbers so SQL can compare them. */
	DefineCustomStringVariable("eds.expected_replicas",
							   "Comma-separated application names of replicas that must be connected, besides those with a physical slot.",
							   NULL, &eds_expected_replicas, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_warn_bytes",
							"Replay lag, in bytes, at which eds_health() warns.",
							NULL, &eds_lag_warn_bytes, 16 * 1024 * 1024, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_critical_bytes",
							"Replay lag, in bytes, at which eds_health() is critical.",
							NULL, &eds_lag_critical_bytes, 1024 * 1024 * 1024, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_warn_seconds",
							"Heartbeat lag, in seconds, at which eds_health() warns.",
							NULL, &eds_lag_warn_seconds, 60, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.lag_critical_seconds",
							"Heartbeat lag, in seconds, at which eds_health() is critical.",
							NULL, &eds_lag_critical_seconds, 300, 0, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.etl_max_age",
							"Minutes after which eds_health() warns that no ETL run succeeded.",
							NULL, &eds_etl_max_age, 30, 1, INT_MAX,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	DefineCustomIntVariable("eds.etl_stall_warn",
							"How long the ETL window may stand still while source changes wait before eds_health() warns (0: never).",
							"The window stops at the oldest transaction open on the source; audit.etl_runs.window_held_by names it.",
							&eds_etl_stall_warn, 300, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomIntVariable("eds.etl_freshness_warn",
							"Age of the newest source time fully loaded after which eds_health() warns.",
							"The freshness is audit.etl_state.source_time: every change committed on the source before it is in the warehouse.",
							&eds_etl_freshness_warn, 1200, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("eds.etl_freshness_critical",
							"Age of the newest source time fully loaded after which eds_health() reports critical.",
							NULL, &eds_etl_freshness_critical, 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);

	DefineCustomIntVariable("eds.source_timeout",
							"Longest wait, in seconds, for any answer from the ETL source.",
							"Also the statement_timeout of the ETL's session on the source.",
							&eds_source_timeout,
							600, 1, 86400,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eds.source_connect_timeout",
							"Longest wait, in seconds, to connect to the ETL source.",
							NULL,
							&eds_source_connect_timeout,
							10, 1, 3600,
							PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eds.max_source_lag",
							"Refuse to load from a replica whose replayed heartbeat is older than this many seconds (0: no limit).",
							NULL,
							&eds_max_source_lag,
							0, 0, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eds.etl_run_retention",
							"Days of ETL run history (audit.etl_runs, etl_rejects, pg_cron details) to keep.",
							NULL,
							&eds_etl_run_retention,
							90, 1, 36500,
							PGC_SUSET, 0,
							NULL, NULL, NULL);

	eds_lag_worker_init();
	eds_worker_pool_init();
	eds_continuous_init();

	MarkGUCPrefixReserved("eds");

	eds_drop_guard_init();
	eds_progress_init();
}
