/*-------------------------------------------------------------------------
 *
 * audit.c
 *		eds_audit_row(): the row-level audit trigger.
 *
 * Attached AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW, it appends one
 * row to operational.audit_log: table, operation, key, the old and new row
 * as jsonb, the columns an UPDATE changed, the actor and the transaction.
 *
 * Rules it keeps:
 *	- The insert runs as the owner of audit_log (SetUserIdAndSecContext), so
 *	  writers need no privilege on the audit table and cannot forge rows.
 *	- The actor is eds.actor when the transaction set it (SET LOCAL, which is
 *	  what survives transaction pooling) and session_user otherwise; the login
 *	  role is always recorded too, since eds.actor is only the app's word.
 *	- One prepared plan per backend; no SQL text is built from values.
 *
 * Trigger argument (optional): the name of the key column; default is the
 * first column of the table's primary key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "catalog/pg_class.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_audit_row);

#define AUDIT_NARGS 9

static SPIPlanPtr audit_insert_plan = NULL;

static const char *audit_insert_sql =
"INSERT INTO operational.audit_log "
"(table_name, operation, record_id, old_values, new_values, changed_columns, "
" actor, db_user, txid) "
"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

static Oid	audit_arg_types[AUDIT_NARGS] = {
	TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTARRAYOID,
	TEXTOID, TEXTOID, INT8OID
};

/* Find the attribute number of the key column for this trigger. */
static AttrNumber
audit_key_attnum(Relation rel, Trigger *trigger)
{
	AttrNumber	attnum;

	if (trigger->tgnargs > 0)
	{
		attnum = SPI_fnumber(RelationGetDescr(rel), trigger->tgargs[0]);
		if (attnum <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("audit trigger \"%s\" names key column \"%s\", which table \"%s\" does not have",
							trigger->tgname, trigger->tgargs[0],
							RelationGetRelationName(rel)),
					 errhint("Recreate the trigger with the name of the table's key column as its argument.")));
		return attnum;
	}

	/* No argument: first column of the primary key, if there is one. */
	attnum = eds_primary_key_attnum(rel);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key for the audit trigger to record",
						RelationGetRelationName(rel)),
				 errhint("Add a primary key, or pass the key column's name as the trigger's argument.")));
	return attnum;
}

/* The names of the columns whose values differ between two versions. */
static Datum
audit_changed_columns(HeapTuple oldtup, HeapTuple newtup, TupleDesc tupdesc)
{
	Datum	   *names = palloc(sizeof(Datum) * Max(tupdesc->natts, 1));
	int			n = 0;

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		bool		oldnull,
					newnull;
		Datum		oldval,
					newval;

		if (att->attisdropped)
			continue;
		oldval = heap_getattr(oldtup, i + 1, tupdesc, &oldnull);
		newval = heap_getattr(newtup, i + 1, tupdesc, &newnull);
		if (oldnull != newnull ||
			(!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen)))
			names[n++] = CStringGetTextDatum(NameStr(att->attname));
	}
	return PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}

Datum
eds_audit_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup = NULL;
	HeapTuple	keytup;
	const char *operation;
	AttrNumber	keyattnum;
	Datum		values[AUDIT_NARGS];
	char		nulls[AUDIT_NARGS];
	char	   *keytext;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eds_audit_row() must be fired AFTER ... FOR EACH ROW"),
				 errhint("Create it with CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW.")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		operation = "INSERT";
		newtup = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		operation = "UPDATE";
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		operation = "DELETE";
		oldtup = trigdata->tg_trigtuple;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eds_audit_row() handles INSERT, UPDATE and DELETE only"),
				 errhint("Remove TRUNCATE from the trigger definition.")));

	keyattnum = audit_key_attnum(rel, trigdata->tg_trigger);
	keytup = newtup ? newtup : oldtup;
	keytext = SPI_getvalue(keytup, tupdesc, keyattnum);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(RelationGetRelationName(rel));
	values[1] = CStringGetTextDatum(operation);
	if (keytext == NULL)
		nulls[2] = 'n';
	else
		values[2] = CStringGetTextDatum(keytext);
	if (oldtup)
		values[3] = JsonbPGetDatum(eds_tuple_to_jsonb(oldtup, tupdesc));
	else
		nulls[3] = 'n';
	if (newtup)
		values[4] = JsonbPGetDatum(eds_tuple_to_jsonb(newtup, tupdesc));
	else
		nulls[4] = 'n';
	if (oldtup && newtup)
		values[5] = audit_changed_columns(oldtup, newtup, tupdesc);
	else
		nulls[5] = 'n';
	values[6] = CStringGetTextDatum((eds_actor && eds_actor[0] != '\0') ?
									eds_actor :
									GetUserNameFromId(GetSessionUserId(), false));
	values[7] = CStringGetTextDatum(GetUserNameFromId(GetSessionUserId(), false));
	values[8] = Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");


	/* Written as the audit table's owner: writers hold no rights on it. */
	eds_insert_as_owner(&audit_insert_plan, audit_insert_sql, AUDIT_NARGS, audit_arg_types,
						values, nulls, eds_relation_owner("operational", "audit_log"));

	SPI_finish();

	return PointerGetDatum(NULL);
}
