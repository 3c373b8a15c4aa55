/*-------------------------------------------------------------------------
 *
 * encodable.c
 *		eds.encodable_text(value, encoding): text that another encoding can
 *		hold.
 *
 * The ETL's session on the source asks for rows in the warehouse's
 * encoding, and the source converts them as it sends them; one character
 * the warehouse encoding has no code for (a euro sign for LATIN1, say)
 * would fail the whole extract, on every run.  Called on the source in the
 * extract queries, this function returns the value with each such
 * character replaced by '?', so the row loads and the run goes on; the ETL
 * records the row in audit.etl_rejects as loaded with replacements.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_encodable_text);

Datum
eds_encodable_text(PG_FUNCTION_ARGS)
{
	text	   *value = PG_GETARG_TEXT_PP(0);
	const char *target_name = NameStr(*PG_GETARG_NAME(1));
	int			target = pg_char_to_encoding(target_name);
	int			source = GetDatabaseEncoding();
	unsigned char *src = (unsigned char *) VARDATA_ANY(value);
	int			len = VARSIZE_ANY_EXHDR(value);
	unsigned char *scratch;
	StringInfoData out;
	Oid			proc;
	int			pos = 0;

	if (target < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a valid encoding name", target_name),
				 errhint("Name a server encoding such as UTF8 or LATIN1.")));
	if (target == source || target == PG_SQL_ASCII || source == PG_SQL_ASCII || len == 0)
		PG_RETURN_TEXT_P(value);
	proc = FindDefaultConversionProc(source, target);
	if (!OidIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("no conversion from %s to %s", pg_encoding_to_char(source), target_name),
				 errhint("Create the warehouse database in an encoding the source's text converts to, such as UTF8.")));

	/* The converted bytes are not kept: only how far conversion got. */
	scratch = palloc((Size) len * MAX_CONVERSION_GROWTH + 1);
	initStringInfo(&out);
	while (pos < len)
	{
		int			done = pg_do_encoding_conversion_buf(proc, source, target, src + pos, len - pos,
														 scratch, len * MAX_CONVERSION_GROWTH + 1, true);

		if (pos == 0 && done == len)
			PG_RETURN_TEXT_P(value);	/* the common case: all of it converts */
		appendBinaryStringInfo(&out, (char *) src + pos, done);
		pos += done;
		if (pos < len)
		{
			appendStringInfoChar(&out, '?');
			pos += pg_mblen((char *) src + pos);
		}
	}
	pfree(scratch);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
