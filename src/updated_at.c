/*-------------------------------------------------------------------------
 *
 * updated_at.c
 *		eds_set_updated_at(): a BEFORE UPDATE row trigger that stamps the
 *		row's updated_at column with the transaction's start time (now()).
 *
 * Written in C because it runs on every update of every operational table.
 * Trigger argument (optional): the column to stamp; default "updated_at".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_set_updated_at);

Datum
eds_set_updated_at(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	const char *colname;
	int			attnum;
	Oid			atttype;
	Datum		newval;
	bool		newnull = false;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eds_set_updated_at() must be fired BEFORE UPDATE ... FOR EACH ROW"),
				 errhint("Create it with CREATE TRIGGER ... BEFORE UPDATE ... FOR EACH ROW.")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	colname = trigdata->tg_trigger->tgnargs > 0 ?
		trigdata->tg_trigger->tgargs[0] : "updated_at";

	attnum = SPI_fnumber(tupdesc, colname);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("table \"%s\" has no column \"%s\" for eds_set_updated_at() to stamp",
						RelationGetRelationName(rel), colname),
				 errhint("Add the column, or pass the column's name as the trigger's argument.")));

	atttype = TupleDescAttr(tupdesc, attnum - 1)->atttypid;
	if (atttype != TIMESTAMPTZOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of table \"%s\" is of type %s, not timestamptz",
						colname, RelationGetRelationName(rel), format_type_be(atttype)),
				 errhint("Stamp a timestamptz column.")));

	newval = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	return PointerGetDatum(heap_modify_tuple_by_cols(trigdata->tg_newtuple, tupdesc,
													 1, &attnum, &newval, &newnull));
}
