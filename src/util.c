/*-------------------------------------------------------------------------
 *
 * util.c
 *		Small helpers shared by the eds triggers and the ETL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "eds.h"

/* Owner of an eds table, looked up by name; errors if it is missing. */
Oid
eds_relation_owner(const char *nspname, const char *relname)
{
	Oid			nsp = get_namespace_oid(nspname, true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s.%s of extension eds does not exist", nspname, relname),
				 errhint("Install the eds extension in this database (CREATE EXTENSION eds), or drop the eds trigger.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* First column of the table's primary key, or InvalidAttrNumber if none. */
AttrNumber
eds_primary_key_attnum(Relation rel)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	idxtup;
	AttrNumber	attnum;

	if (!OidIsValid(pkoid))
		return InvalidAttrNumber;
	idxtup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
	if (!HeapTupleIsValid(idxtup))
		elog(ERROR, "cache lookup failed for index %u", pkoid);
	attnum = ((Form_pg_index) GETSTRUCT(idxtup))->indkey.values[0];
	ReleaseSysCache(idxtup);
	return attnum;
}

/*
 * Run an insert as the owner of the target table, so that the writers whose
 * triggers fire need no privilege on it (not even USAGE on its schema) and
 * cannot forge rows.  The plan is prepared on first use, also as the owner,
 * and kept for the life of the backend.  An error inside needs no PG_TRY:
 * (sub)transaction abort restores the user id and security context, as for
 * the RI triggers.
 */
void
eds_insert_as_owner(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes,
					Datum *values, const char *nulls, Oid owner)
{
	Oid			save_userid;
	int			save_sec_context;
	int			rc;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*plan = p;
	}
	rc = SPI_execute_plan(*plan, values, nulls, false, 1);
	SetUserIdAndSecContext(save_userid, save_sec_context);

	if (rc != SPI_OK_INSERT)
		elog(ERROR, "eds: insert failed: %s", SPI_result_code_string(rc));
}
