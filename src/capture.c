/*-------------------------------------------------------------------------
 *
 * capture.c
 *		eds_capture_change(): the change-capture trigger on the source.
 *
 * AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW on customers, loans and
 * payments.  It records only the changed key, the operation and (through
 * the column default) the 64-bit id of the top-level transaction.  The ETL
 * reads the keys whose transaction id lies below the xmin of one source
 * snapshot and fetches those rows as of that same snapshot, so the log
 * never needs the row images and stays small.  A primary-key update is
 * recorded as a delete of the old key and an insert of the new one.
 *
 * AFTER TRUNCATE ... FOR EACH STATEMENT records op 'T' (key 0): a truncate
 * fires no row triggers, so the run that reads it reloads the whole table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_capture_change);

static SPIPlanPtr capture_plan = NULL;
static Oid	capture_arg_types[3] = {TEXTOID, CHAROID, INT8OID};

/* The key column: first primary-key column, which must be an integer. */
static AttrNumber
capture_key_attnum(Relation rel)
{
	AttrNumber	attnum = eds_primary_key_attnum(rel);
	Oid			atttype;

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key for eds change capture",
						RelationGetRelationName(rel)),
				 errhint("eds.capture_change() only works on tables with an integer primary key.")));
	atttype = TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid;
	if (atttype != INT2OID && atttype != INT4OID && atttype != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("primary key of table \"%s\" is not an integer",
						RelationGetRelationName(rel)),
				 errhint("eds.capture_change() only works on tables with an integer primary key.")));
	return attnum;
}

/* The key of one row version. */
static int64
capture_key(Relation rel, AttrNumber attnum, HeapTuple tuple)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, tupdesc, &isnull);

	if (isnull)
		elog(ERROR, "primary key of \"%s\" is null", RelationGetRelationName(rel));
	switch (TupleDescAttr(tupdesc, attnum - 1)->atttypid)
	{
		case INT2OID:
			return DatumGetInt16(value);
		case INT4OID:
			return DatumGetInt32(value);
		default:
			return DatumGetInt64(value);
	}
}

static void
capture_record(Relation rel, char op, int64 key)
{
	Datum		values[3];

	values[0] = CStringGetTextDatum(RelationGetRelationName(rel));
	values[1] = CharGetDatum(op);
	values[2] = Int64GetDatum(key);
	eds_insert_as_owner(&capture_plan, "INSERT INTO eds.change_log (table_name, op, pk) VALUES ($1, $2, $3)",
						3, capture_arg_types, values, NULL, eds_relation_owner("eds", "change_log"));
}

Datum
eds_capture_change(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	AttrNumber	keyattnum;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) == TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eds_capture_change() must be fired AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW "
						"or AFTER TRUNCATE ... FOR EACH STATEMENT"),
				 errhint("Create it with CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW, "
						 "and a second one AFTER TRUNCATE ... FOR EACH STATEMENT.")));

	rel = trigdata->tg_relation;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		capture_record(rel, 'T', 0);
		SPI_finish();
		return PointerGetDatum(NULL);
	}

	keyattnum = capture_key_attnum(rel);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		capture_record(rel, 'I', capture_key(rel, keyattnum, trigdata->tg_trigtuple));
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		capture_record(rel, 'D', capture_key(rel, keyattnum, trigdata->tg_trigtuple));
	else
	{
		int64		oldkey = capture_key(rel, keyattnum, trigdata->tg_trigtuple);
		int64		newkey = capture_key(rel, keyattnum, trigdata->tg_newtuple);

		if (oldkey == newkey)
			capture_record(rel, 'U', newkey);
		else
		{
			capture_record(rel, 'D', oldkey);
			capture_record(rel, 'I', newkey);
		}
	}

	SPI_finish();
	return PointerGetDatum(NULL);
}
