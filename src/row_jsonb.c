/*-------------------------------------------------------------------------
 *
 * row_jsonb.c
 *		Turn a heap tuple into a jsonb object without leaving C.
 *
 * The audit trigger runs inside every write to an audited table, so it
 * cannot afford to_jsonb() through SPI.  Instead each column is mapped to
 * the jsonb kind to_jsonb() would give it (number, boolean, ISO date string,
 * nested jsonb, or the type's text output) and pushed straight into a
 * JsonbParseState.  The per-column decisions and output functions are
 * cached per row type, so the hot path does no catalog lookups.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "eds.h"

typedef enum RjKind
{
	RJ_BOOL,
	RJ_INTEGER,
	RJ_NUMERIC,
	RJ_FLOAT,
	RJ_DATETIME,
	RJ_JSONB,
	RJ_JSON,
	RJ_TEXT
} RjKind;

typedef struct RjColumn
{
	Oid			typid;
	RjKind		kind;
	FmgrInfo	output;			/* used for RJ_TEXT and RJ_JSON */
} RjColumn;

/* One entry per row type (tdtypeid); rebuilt when the columns change. */
typedef struct RjRowType
{
	Oid			rowtype;		/* hash key */
	int			natts;
	RjColumn   *columns;
} RjRowType;

static HTAB *rj_cache = NULL;

static RjKind
rj_kind_for_type(Oid typid)
{
	switch (typid)
	{
		case BOOLOID:
			return RJ_BOOL;
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
			return RJ_INTEGER;
		case NUMERICOID:
			return RJ_NUMERIC;
		case FLOAT4OID:
		case FLOAT8OID:
			return RJ_FLOAT;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return RJ_DATETIME;
		case JSONBOID:
			return RJ_JSONB;
		case JSONOID:
			return RJ_JSON;
		default:
			return RJ_TEXT;
	}
}

/* Does the cached description still match the tuple descriptor? */
static bool
rj_row_type_matches(RjRowType *entry, TupleDesc tupdesc)
{
	if (entry->columns == NULL || entry->natts != tupdesc->natts)
		return false;
	for (int i = 0; i < tupdesc->natts; i++)
	{
		if (entry->columns[i].typid != TupleDescAttr(tupdesc, i)->atttypid)
			return false;
	}
	return true;
}

static RjRowType *
rj_lookup_row_type(TupleDesc tupdesc)
{
	RjRowType  *entry;
	bool		found;

	if (rj_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RjRowType);
		ctl.hcxt = TopMemoryContext;
		rj_cache = hash_create("eds row_jsonb cache", 16, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	entry = hash_search(rj_cache, &tupdesc->tdtypeid, HASH_ENTER, &found);
	if (!found)
		entry->columns = NULL;

	if (!rj_row_type_matches(entry, tupdesc))
	{
		RjColumn   *columns;

		columns = MemoryContextAllocZero(TopMemoryContext,
										 sizeof(RjColumn) * Max(tupdesc->natts, 1));
		for (int i = 0; i < tupdesc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, i);

			columns[i].typid = att->atttypid;
			columns[i].kind = rj_kind_for_type(att->atttypid);
			if (columns[i].kind == RJ_TEXT || columns[i].kind == RJ_JSON)
			{
				Oid			outfunc;
				bool		isvarlena;

				getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
				fmgr_info_cxt(outfunc, &columns[i].output, TopMemoryContext);
			}
		}
		if (entry->columns)
			pfree(entry->columns);
		entry->columns = columns;
		entry->natts = tupdesc->natts;
	}
	return entry;
}

static void
rj_set_string(JsonbValue *jv, char *str)
{
	jv->type = jbvString;
	jv->val.string.val = str;
	jv->val.string.len = strlen(str);
}

/* Fill *jv with the jsonb form of one non-null column value. */
static void
rj_value(JsonbValue *jv, RjColumn *col, Datum value)
{
	switch (col->kind)
	{
		case RJ_BOOL:
			jv->type = jbvBool;
			jv->val.boolean = DatumGetBool(value);
			break;
		case RJ_INTEGER:
			{
				int64		v;

				if (col->typid == INT2OID)
					v = DatumGetInt16(value);
				else if (col->typid == INT4OID)
					v = DatumGetInt32(value);
				else if (col->typid == OIDOID)
					v = DatumGetObjectId(value);
				else
					v = DatumGetInt64(value);
				jv->type = jbvNumeric;
				jv->val.numeric = int64_to_numeric(v);
				break;
			}
		case RJ_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				/* jsonb numbers cannot hold NaN or infinity: to_jsonb uses text */
				if (numeric_is_nan(num) || numeric_is_inf(num))
					rj_set_string(jv, numeric_normalize(num));
				else
				{
					jv->type = jbvNumeric;
					jv->val.numeric = num;
				}
				break;
			}
		case RJ_FLOAT:
			{
				float8		f = (col->typid == FLOAT4OID) ?
				(float8) DatumGetFloat4(value) : DatumGetFloat8(value);

				if (isnan(f) || isinf(f))
					rj_set_string(jv, isnan(f) ? pstrdup("NaN") :
								  pstrdup(f > 0 ? "Infinity" : "-Infinity"));
				else
				{
					jv->type = jbvNumeric;
					jv->val.numeric = DatumGetNumeric(DirectFunctionCall1(float8_numeric,
																		  Float8GetDatum(f)));
				}
				break;
			}
		case RJ_DATETIME:
			rj_set_string(jv, JsonEncodeDateTime(NULL, value, col->typid, NULL));
			break;
		case RJ_JSONB:
			{
				Jsonb	   *jb = DatumGetJsonbP(value);

				jv->type = jbvBinary;
				jv->val.binary.data = &jb->root;
				jv->val.binary.len = VARSIZE(jb) - VARHDRSZ;
				break;
			}
		case RJ_JSON:
			{
				char	   *text = OutputFunctionCall(&col->output, value);
				Jsonb	   *jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																	CStringGetDatum(text)));

				jv->type = jbvBinary;
				jv->val.binary.data = &jb->root;
				jv->val.binary.len = VARSIZE(jb) - VARHDRSZ;
				break;
			}
		case RJ_TEXT:
			rj_set_string(jv, OutputFunctionCall(&col->output, value));
			break;
	}
}

Jsonb *
eds_tuple_to_jsonb(HeapTuple tuple, TupleDesc tupdesc)
{
	RjRowType  *rowtype = rj_lookup_row_type(tupdesc);
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		JsonbValue	key;
		JsonbValue	val;
		bool		isnull;
		Datum		value;

		if (att->attisdropped)
			continue;

		rj_set_string(&key, NameStr(att->attname));
		pushJsonbValue(&state, WJB_KEY, &key);

		value = heap_getattr(tuple, i + 1, tupdesc, &isnull);
		if (isnull)
			val.type = jbvNull;
		else
			rj_value(&val, &rowtype->columns[i], value);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	return JsonbValueToJsonb(result);
}
