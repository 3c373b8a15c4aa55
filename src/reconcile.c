/*-------------------------------------------------------------------------
 *
 * reconcile.c
 *		eds_reconcile(): compare the source with the warehouse.
 *
 * The same figures are computed on each side by SQL functions of eds
 * (eds.reconcile_source_figures() on the source, read over libpq, and
 * eds.reconcile_warehouse_figures() here), then joined; only differences
 * come back, so an empty result means the warehouse matches the source as
 * of the moment both were read.  Run it when the source is quiet (or on
 * the snapshot the last run used) for an exact answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "eds.h"

PG_FUNCTION_INFO_V1(eds_reconcile);

Datum
eds_reconcile(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PGresult   *res;
	int			n;
	Datum	   *names,
			   *keys,
			   *vals;
	bool	   *valnulls;
	Datum		args[3];
	Oid			argtypes[3] = {TEXTARRAYOID, TEXTARRAYOID, NUMERICARRAYOID};
	int			dims[1];
	int			lbs[1] = {1};

	InitMaterializedSRF(fcinfo, 0);

	eds_remote_connect();
	res = eds_remote_exec("SELECT check_name, check_key, value::text FROM eds.reconcile_source_figures()",
						  PGRES_TUPLES_OK, "computing the source's figures");
	n = PQntuples(res);
	names = palloc(sizeof(Datum) * Max(n, 1));
	keys = palloc(sizeof(Datum) * Max(n, 1));
	vals = palloc(sizeof(Datum) * Max(n, 1));
	valnulls = palloc(sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		names[i] = CStringGetTextDatum(PQgetvalue(res, i, 0));
		keys[i] = CStringGetTextDatum(PQgetvalue(res, i, 1));
		valnulls[i] = PQgetisnull(res, i, 2);
		vals[i] = valnulls[i] ? (Datum) 0 :
			DirectFunctionCall3(numeric_in, CStringGetDatum(PQgetvalue(res, i, 2)),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	}
	PQclear(res);
	eds_remote_disconnect();

	dims[0] = n;
	args[0] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_md_array(vals, valnulls, 1, dims, lbs, NUMERICOID, -1, false,
												 TYPALIGN_INT));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT coalesce(s.check_name, w.check_name), coalesce(s.check_key, w.check_key), "
							  "s.value, w.value "
							  "FROM unnest($1::text[], $2::text[], $3::numeric[]) AS s(check_name, check_key, value) "
							  "FULL JOIN eds.reconcile_warehouse_figures() AS w "
							  "ON w.check_name = s.check_name AND w.check_key = s.check_key "
							  "WHERE s.value IS DISTINCT FROM w.value ORDER BY 1, 2",
							  3, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not compare the reconciliation figures");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		values[4];
		bool		nulls[4];

		for (int c = 0; c < 4; c++)
			values[c] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, c + 1, &nulls[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}
