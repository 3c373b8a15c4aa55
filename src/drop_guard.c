/*-------------------------------------------------------------------------
 *
 * drop_guard.c
 *		Refuse to let DROP EXTENSION eds (or any cascading drop that reaches
 *		it, such as DROP SCHEMA public CASCADE) silently delete a bank's rows.
 *
 * The guard is an object_access_hook on OAT_DROP of relations.  Dependent
 * objects are dropped before the object they depend on, so every table that
 * belongs to eds is reported here while its rows are still readable.  If
 * one whose rows matter holds a row and eds.allow_drop_with_data is off, the
 * drop fails and
 * the whole transaction rolls back.  The extension's own upgrade scripts
 * (creating_extension) are not stopped: dropping a table there is a
 * deliberate, reviewed step.
 *
 * The hook lives in each backend that has loaded eds, which with
 * shared_preload_libraries means every backend.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/objectaccess.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/syscache.h"
#include "commands/extension.h"
#include "executor/tuptable.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "eds.h"

static object_access_hook_type prev_object_access_hook = NULL;

/* Is the table registered with pg_extension_config_dump by eds? */
static bool
dg_is_config_table(Oid eds_oid, Oid relid)
{
	HeapTuple	tup = SearchSysCache1(EXTENSIONOID, ObjectIdGetDatum(eds_oid));
	bool		found = false;

	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		config = SysCacheGetAttr(EXTENSIONOID, tup, Anum_pg_extension_extconfig, &isnull);

		if (!isnull)
		{
			Datum	   *oids;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(config), OIDOID, sizeof(Oid), true,
							  TYPALIGN_INT, &oids, NULL, &n);
			for (int i = 0; i < n && !found; i++)
				found = (DatumGetObjectId(oids[i]) == relid);
		}
		ReleaseSysCache(tup);
	}
	return found;
}

/* Does the table hold at least one row visible to us? */
static bool
dg_table_has_rows(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snapshot, 0, NULL);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	bool		found = table_scan_getnextslot(scan, ForwardScanDirection, slot);

	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return found;
}

static void
dg_check_drop(Oid relid)
{
	Oid			eds_oid;
	char		relkind;

	if (eds_allow_drop_with_data || creating_extension)
		return;

	relkind = get_rel_relkind(relid);
	if (relkind != RELKIND_RELATION)
		return;

	/*
	 * Rows matter in the tables eds registered for pg_dump (reference data
	 * the install script fills, like dim_date, does not count), and in the
	 * partitions the ETL created under an eds table (fact_payments).
	 */
	eds_oid = get_extension_oid("eds", true);
	if (!OidIsValid(eds_oid))
		return;
	if (get_rel_relispartition(relid))
	{
		if (getExtensionOfObject(RelationRelationId,
								 llast_oid(get_partition_ancestors(relid))) != eds_oid)
			return;
	}
	else if (!dg_is_config_table(eds_oid, relid))
		return;

	if (dg_table_has_rows(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop table %s.%s of extension eds because it holds rows",
						get_namespace_name(get_rel_namespace(relid)),
						get_rel_name(relid)),
				 errdetail("Dropping the eds extension drops its tables with their data."),
				 errhint("Back the data up with pg_dump first; then, as a superuser, "
						 "SET eds.allow_drop_with_data = on and repeat the command.")));
}

static void
dg_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access == OAT_DROP && classId == RelationRelationId && subId == 0)
		dg_check_drop(objectId);
}

void
eds_drop_guard_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = dg_object_access;
}
