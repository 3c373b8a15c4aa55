/*-------------------------------------------------------------------------
 *
 * remote.c
 *		Talking to the ETL source over libpq from inside a backend.
 *
 * The source is the foreign server eds_source and the current user's user
 * mapping, as with dblink and postgres_fdw.  Every wait on the socket goes
 * through WaitLatchOrSocket with CHECK_FOR_INTERRUPTS, so a cancel or a
 * shutdown is honoured at once, and is bounded by eds.source_timeout.  The
 * remote session is pinned (search_path, time zone, date style, encoding)
 * so the text it sends parses the same way here.  A non-superuser must
 * connect with a password, so nobody can borrow the server's own files or
 * trust entries (the dblink and postgres_fdw rule).
 *
 * One connection at a time per backend; eds_remote_disconnect() is safe to
 * call from error paths.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_user_mapping.h"
#include "commands/defrem.h"
#include "foreign/foreign.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "libpq-fe.h"

#include "eds.h"

#define EDS_SOURCE_SERVER "eds_source"

int			eds_source_timeout = 600;	/* seconds, eds.source_timeout */
int			eds_source_connect_timeout = 10;	/* seconds */

static PGconn *remote_conn = NULL;
static bool remote_fd_acquired = false;

/*
 * What remote_conn was opened with (server, options, timeout): a worker
 * that stays between runs reuses the connection while this is unchanged.
 * In TopMemoryContext, as the connection outlives the run.
 */
static char *remote_conn_key = NULL;

/* Copy-out state for eds_remote_copy_read(). */
static char *copy_buf = NULL;
static int	copy_len = 0;
static int	copy_pos = 0;
static bool copy_done = false;
static int64 copy_rows = 0;

void
eds_remote_disconnect(void)
{
	if (copy_buf)
	{
		PQfreemem(copy_buf);
		copy_buf = NULL;
	}
	if (remote_conn)
	{
		PQfinish(remote_conn);
		remote_conn = NULL;
	}
	if (remote_conn_key)
	{
		pfree(remote_conn_key);
		remote_conn_key = NULL;
	}
	if (remote_fd_acquired)
	{
		ReleaseExternalFD();
		remote_fd_acquired = false;
	}
}

/* Raise an error built from the source's own error, with our hint. */
static void
remote_report(PGresult *res, const char *what)
{
	const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char	   *primary = res ? pstrdup(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) ?
										PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "") : NULL;
	char	   *detail = res && PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) ?
		pstrdup(PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL)) : NULL;
	char	   *connmsg = remote_conn ? pchomp(PQerrorMessage(remote_conn)) : pstrdup("");
	int			code = sqlstate ? MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2],
												 sqlstate[3], sqlstate[4]) :
		ERRCODE_CONNECTION_FAILURE;

	if (res)
		PQclear(res);
	if (primary == NULL || primary[0] == '\0')
		primary = connmsg;
	eds_remote_disconnect();
	ereport(ERROR,
			(errcode(code),
			 errmsg("ETL source failed while %s: %s", what, primary),
			 detail ? errdetail_internal("%s", detail) : 0,
			 errhint("Check the source server eds_source (SELECT eds_set_source(...)) and its log.")));
}

/* Wait until the socket is ready, honouring interrupts and the deadline. */
static void
remote_wait(int events, TimestampTz deadline, const char *what)
{
	long		timeout_ms;
	int			rc;

	timeout_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
	if (timeout_ms <= 0)
	{
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("ETL source did not answer in time while %s", what),
				 errhint("The limit is eds.source_timeout (%d s) or eds.source_connect_timeout (%d s); "
						 "check that the source is up and not blocked.",
						 eds_source_timeout, eds_source_connect_timeout)));
	}
	rc = WaitLatchOrSocket(MyLatch,
						   WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | WL_TIMEOUT | events,
						   PQsocket(remote_conn), timeout_ms, PG_WAIT_EXTENSION);
	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	/* A cancel or termination lands here as an ERROR; callers clean up. */
	CHECK_FOR_INTERRUPTS();
}

/* The server the next eds_remote_connect() reaches. */
static const char *remote_server = EDS_SOURCE_SERVER;

/* Whether a foreign server of this name is declared (eds_source_primary is optional). */
bool
eds_remote_server_exists(const char *servername)
{
	return GetForeignServerByName(servername, true) != NULL;
}

/* Look up the option lists of the source server and our user mapping. */
static void
remote_options(List **server_opts, List **mapping_opts)
{
	ForeignServer *server = GetForeignServerByName(remote_server, true);
	UserMapping *um;

	if (server == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION),
				 errmsg("no ETL source is declared"),
				 errhint("Declare it with SELECT eds_set_source('host=... port=... dbname=... user=... password=...').")));
	if (!SearchSysCacheExists2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(GetUserId()),
							   ObjectIdGetDatum(server->serverid)) &&
		!SearchSysCacheExists2(USERMAPPINGUSERSERVER, ObjectIdGetDatum(InvalidOid),
							   ObjectIdGetDatum(server->serverid)))
		ereport(ERROR,
				(errcode(ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION),
				 errmsg("role \"%s\" has no user mapping for the ETL source",
						GetUserNameFromId(GetUserId(), false)),
				 errhint("Run eds_set_source(...) as this role, or CREATE USER MAPPING FOR it SERVER %s.", remote_server)));
	um = GetUserMapping(GetUserId(), server->serverid);
	*server_opts = server->options;
	*mapping_opts = um->options;
}

/* A readable description of the source, without secrets, for run rows. */
char *
eds_remote_describe(void)
{
	List	   *sopts,
			   *uopts;
	ListCell   *lc;
	StringInfoData buf;

	remote_options(&sopts, &uopts);
	initStringInfo(&buf);
	foreach(lc, sopts)
	{
		DefElem    *d = lfirst(lc);

		appendStringInfo(&buf, "%s%s=%s", buf.len ? " " : "", d->defname, defGetString(d));
	}
	foreach(lc, uopts)
	{
		DefElem    *d = lfirst(lc);

		if (strcmp(d->defname, "password") != 0)
			appendStringInfo(&buf, "%s%s=%s", buf.len ? " " : "", d->defname, defGetString(d));
	}
	return buf.data;
}

/* Connect to another declared server than eds_source, e.g. eds_source_primary. */
PGconn *
eds_remote_connect_to(const char *servername)
{
	PGconn	   *volatile conn = NULL;

	remote_server = servername;
	PG_TRY();
	{
		conn = eds_remote_connect();
	}
	PG_FINALLY();
	{
		remote_server = EDS_SOURCE_SERVER;
	}
	PG_END_TRY();
	return conn;
}

/*
 * Whether the open connection was made with these options and still
 * answers.  A source that restarted, or closed the idle session, fails the
 * check and is reconnected; a cancel during the check is the run's.
 */
static bool
remote_connection_reusable(const char *key)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = false;

	if (remote_conn == NULL || remote_conn_key == NULL || strcmp(remote_conn_key, key) != 0 ||
		PQstatus(remote_conn) != CONNECTION_OK || PQtransactionStatus(remote_conn) != PQTRANS_IDLE)
		return false;
	PG_TRY();
	{
		PQclear(eds_remote_exec("SELECT 1", PGRES_TUPLES_OK, "checking the open connection"));
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		FlushErrorState();
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return ok;
}

PGconn *
eds_remote_connect(void)
{
	List	   *sopts,
			   *uopts;
	const char **keywords;
	const char **values;
	int			n = 0;
	ListCell   *lc;
	bool		has_password = false;
	TimestampTz deadline;
	StringInfoData key;

	remote_options(&sopts, &uopts);

	keywords = palloc0(sizeof(char *) * (list_length(sopts) + list_length(uopts) + 4));
	values = palloc0(sizeof(char *) * (list_length(sopts) + list_length(uopts) + 4));
	foreach(lc, sopts)
	{
		DefElem    *d = lfirst(lc);

		keywords[n] = d->defname;
		values[n++] = defGetString(d);
	}
	foreach(lc, uopts)
	{
		DefElem    *d = lfirst(lc);

		if (strcmp(d->defname, "password") == 0 && defGetString(d)[0] != '\0')
			has_password = true;
		keywords[n] = d->defname;
		values[n++] = defGetString(d);
	}
	keywords[n] = "fallback_application_name";
	values[n++] = "eds_etl";
	keywords[n] = "client_encoding";
	values[n++] = GetDatabaseEncodingName();
	keywords[n] = NULL;
	values[n] = NULL;

	initStringInfo(&key);
	appendStringInfo(&key, "%s/%d", remote_server, eds_source_timeout);
	for (int i = 0; i < n; i++)
		appendStringInfo(&key, "/%s=%s", keywords[i], values[i]);
	if (remote_connection_reusable(key.data))
		return remote_conn;
	eds_remote_disconnect();

	if (!superuser() && !has_password)
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required to reach the ETL source"),
				 errdetail("Non-superusers must give a password in the user mapping."),
				 errhint("Run eds_set_source() with a conninfo that includes password=...")));

	if (!AcquireExternalFD())
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to the ETL source: out of file descriptors"),
				 errhint("Raise max_files_per_process, or close other connections.")));
	remote_fd_acquired = true;

	remote_conn = PQconnectStartParams(keywords, values, false);
	if (remote_conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while connecting to the ETL source")));

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), eds_source_connect_timeout * 1000);
	for (;;)
	{
		PostgresPollingStatusType st;

		if (PQstatus(remote_conn) == CONNECTION_BAD)
			break;
		st = PQconnectPoll(remote_conn);
		if (st == PGRES_POLLING_OK || st == PGRES_POLLING_FAILED)
			break;
		remote_wait(st == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE,
					deadline, "connecting");
	}
	if (PQstatus(remote_conn) != CONNECTION_OK)
	{
		char	   *msg = pchomp(PQerrorMessage(remote_conn));
		char	   *where = eds_remote_describe();

		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to the ETL source (%s)", where),
				 errdetail_internal("%s", msg),
				 errhint("Check that the source is running and reachable, and the host, port, dbname, user and password "
						 "given to eds_set_source().")));
	}
	if (!superuser() && !PQconnectionUsedPassword(remote_conn))
	{
		eds_remote_disconnect();
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required to reach the ETL source"),
				 errdetail("The source did not ask for the password, so non-superusers may not use this connection."),
				 errhint("Make the source's pg_hba.conf require a password for this user.")));
	}

	/* Text from the source must parse the same way here. */
	{
		char	   *settings = psprintf("SET search_path = pg_catalog; SET timezone = 'UTC'; "
										"SET datestyle = ISO; SET intervalstyle = postgres; "
										"SET extra_float_digits = 3; SET statement_timeout = %d",
										eds_source_timeout * 1000);

		PQclear(eds_remote_exec(settings, PGRES_COMMAND_OK, "setting up the session"));
	}
	remote_conn_key = MemoryContextStrdup(TopMemoryContext, key.data);
	return remote_conn;
}

/*
 * Run one command and return its last result, which must have the expected
 * status; the caller PQclear()s it.  PGRES_COPY_OUT leaves the connection
 * in copy mode for eds_remote_copy_read().
 */
PGresult *
eds_remote_exec(const char *sql, ExecStatusType expected, const char *what)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), eds_source_timeout * 1000);
	PGresult   *last = NULL;

	Assert(remote_conn != NULL);
	if (!PQsendQuery(remote_conn, sql))
		remote_report(NULL, what);
	for (;;)
	{
		PGresult   *res;

		while (PQisBusy(remote_conn))
		{
			remote_wait(WL_SOCKET_READABLE, deadline, what);
			if (!PQconsumeInput(remote_conn))
				remote_report(last, what);
		}
		res = PQgetResult(remote_conn);
		if (res == NULL)
			break;
		if (last)
			PQclear(last);
		last = res;
		if (PQresultStatus(res) == PGRES_COPY_OUT || PQresultStatus(res) == PGRES_FATAL_ERROR)
			break;
	}
	if (last == NULL || PQresultStatus(last) != expected)
		remote_report(last, what);
	if (expected == PGRES_COPY_OUT)
	{
		copy_done = false;
		copy_pos = copy_len = 0;
		copy_rows = 0;
	}
	return last;
}

/*
 * copy_data_source_cb for BeginCopyFrom(): hand the COPY TO STDOUT stream
 * of the source to the local COPY FROM, a row at a time, never more.
 */
int
eds_remote_copy_read(void *outbuf, int minread, int maxread)
{
	int			given = 0;

	while (given < minread && !copy_done)
	{
		if (copy_pos >= copy_len)
		{
			int			len;

			if (copy_buf)
			{
				PQfreemem(copy_buf);
				copy_buf = NULL;
			}
			len = PQgetCopyData(remote_conn, &copy_buf, true);
			if (len == 0)
			{
				TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																   eds_source_timeout * 1000);

				remote_wait(WL_SOCKET_READABLE, deadline, "extracting rows");
				if (!PQconsumeInput(remote_conn))
					remote_report(NULL, "extracting rows");
				continue;
			}
			if (len == -1)
			{
				TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																   eds_source_timeout * 1000);
				PGresult   *res;

				while (PQisBusy(remote_conn))
				{
					remote_wait(WL_SOCKET_READABLE, deadline, "finishing the extract");
					if (!PQconsumeInput(remote_conn))
						remote_report(NULL, "finishing the extract");
				}
				res = PQgetResult(remote_conn);

				/* The COPY's own end status tells whether it finished well. */
				if (PQresultStatus(res) != PGRES_COMMAND_OK)
					remote_report(res, "extracting rows");
				PQclear(res);
				while ((res = PQgetResult(remote_conn)) != NULL)
					PQclear(res);
				copy_done = true;
				break;
			}
			if (len < 0)
				remote_report(NULL, "extracting rows");
			copy_len = len;
			copy_pos = 0;
			/* PQgetCopyData hands over one row at a time. */
			if (++copy_rows % 10000 == 0)
				eds_progress_rows(copy_rows);
		}
		{
			int			n = Min(copy_len - copy_pos, maxread - given);

			memcpy((char *) outbuf + given, copy_buf + copy_pos, n);
			copy_pos += n;
			given += n;
		}
	}
	return given;
}
