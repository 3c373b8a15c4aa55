/*-------------------------------------------------------------------------
 *
 * drop_guard.c
 *		Refuse to let DROP EXTENSION eds (or any cascading drop that reaches
 *		it, such as DROP SCHEMA public CASCADE) silently delete a bank's rows.
 *
 * The guard is an object_access_hook on OAT_DROP of relations.  Dependent
 * objects are dropped before the object they depend on, so every table that
 * belongs to eds is reported here while its rows are still readable.  If
 * one holds a row and eds.allow_drop_with_data is off, the drop fails and
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
#include "commands/extension.h"
#include "executor/tuptable.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "eds.h"

static object_access_hook_type prev_object_access_hook = NULL;

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
	Oid			owner_relid;
	char		relkind;

	if (eds_allow_drop_with_data || creating_extension)
		return;

	relkind = get_rel_relkind(relid);
	if (relkind != RELKIND_RELATION)
		return;

	/*
	 * A partition the ETL created is not an extension member itself, but
	 * it goes with its eds-owned parent (fact_payments), so judge it by
	 * the root of its partition tree.
	 */
	eds_oid = get_extension_oid("eds", true);
	if (!OidIsValid(eds_oid))
		return;
	owner_relid = relid;
	if (get_rel_relispartition(relid))
		owner_relid = llast_oid(get_partition_ancestors(relid));
	if (getExtensionOfObject(RelationRelationId, owner_relid) != eds_oid)
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
