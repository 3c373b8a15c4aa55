/*-------------------------------------------------------------------------
 *
 * source.c
 *		eds_set_source(conninfo): declare the ETL source.
 *
 * The conninfo is split the way postgres_fdw splits it: connection options
 * go to the foreign server eds_source, user and password to a user mapping
 * for the current user, where only superusers and that user can read them.
 * The string is parsed by libpq itself, so only real libpq keywords pass,
 * and the DDL is built with quoted literals, never by pasting the input.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "libpq-fe.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_set_source);
PG_FUNCTION_INFO_V1(eds_set_source_primary);

/* Options that make no sense for the ETL's connection. */
static bool
source_keyword_refused(const char *keyword)
{
	return strcmp(keyword, "replication") == 0 ||
		strcmp(keyword, "client_encoding") == 0 ||
		strcmp(keyword, "fallback_application_name") == 0 ||
		strcmp(keyword, "options") == 0;
}

static text *declare_server(const char *server, FunctionCallInfo fcinfo);

Datum
eds_set_source(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(declare_server("eds_source", fcinfo));
}

Datum
eds_set_source_primary(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(declare_server("eds_source_primary", fcinfo));
}

/*
 * Parse the conninfo (argument 0) and (re)create the foreign server with a
 * user mapping for the current user; returns the options without password.
 */
static text *
declare_server(const char *server, FunctionCallInfo fcinfo)
{
	const char *fname = strcmp(server, "eds_source") == 0 ? "eds_set_source" : "eds_set_source_primary";
	char	   *conninfo;
	char	   *errmsg_libpq = NULL;
	PQconninfoOption *opts;
	StringInfoData server_opts;
	StringInfoData mapping_opts;
	StringInfoData shown;
	int			save_nestlevel;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s: conninfo must not be null", fname),
				 errhint("Pass a libpq connection string such as 'host=127.0.0.1 port=5440 dbname=loans_db user=eds_etl password=...'.")));
	conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strspn(conninfo, " \t\n\r") == strlen(conninfo))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: conninfo is empty", fname),
				 errdetail("An empty connection string would connect to this server's own defaults."),
				 errhint("Name the source: 'host=... port=... dbname=... user=... password=...'.")));

	opts = PQconninfoParse(conninfo, &errmsg_libpq);
	if (opts == NULL)
	{
		char	   *msg = errmsg_libpq ? pchomp(errmsg_libpq) : pstrdup("out of memory");

		if (errmsg_libpq)
			PQfreemem(errmsg_libpq);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: invalid connection string", fname),
				 errdetail_internal("%s", msg),
				 errhint("Use libpq keyword=value pairs, for example 'host=127.0.0.1 port=5440 dbname=loans_db'.")));
	}

	initStringInfo(&server_opts);
	initStringInfo(&mapping_opts);
	initStringInfo(&shown);
	for (PQconninfoOption *o = opts; o->keyword; o++)
	{
		StringInfo	dest;

		if (o->val == NULL)
			continue;
		if (source_keyword_refused(o->keyword))
		{
			char	   *kw = pstrdup(o->keyword);

			PQconninfoFree(opts);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: option \"%s\" is not allowed", fname, kw),
					 errdetail("eds sets the session options of its ETL connection itself."),
					 errhint("Remove \"%s\" from the connection string.", kw)));
		}
		dest = (strcmp(o->keyword, "user") == 0 || strcmp(o->keyword, "password") == 0) ?
			&mapping_opts : &server_opts;
		appendStringInfo(dest, "%s%s %s", dest->len ? ", " : "",
						 quote_identifier(o->keyword), quote_literal_cstr(o->val));
		if (strcmp(o->keyword, "password") != 0)
			appendStringInfo(&shown, "%s%s=%s", shown.len ? " " : "", o->keyword, o->val);
	}
	PQconninfoFree(opts);

	/* Replace any earlier declaration, with all its mappings, quietly. */
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("client_min_messages", "warning", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	SPI_execute(psprintf("DROP SERVER IF EXISTS %s CASCADE", server), false, 0);
	SPI_execute(psprintf("CREATE SERVER %s FOREIGN DATA WRAPPER eds_fdw%s%s%s", server,
						 server_opts.len ? " OPTIONS (" : "", server_opts.data,
						 server_opts.len ? ")" : ""), false, 0);
	SPI_execute(psprintf("CREATE USER MAPPING FOR CURRENT_USER SERVER %s%s%s%s", server,
						 mapping_opts.len ? " OPTIONS (" : "", mapping_opts.data,
						 mapping_opts.len ? ")" : ""), false, 0);
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);

	return cstring_to_text(shown.data);
}
