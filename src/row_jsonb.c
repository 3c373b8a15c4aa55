/*-------------------------------------------------------------------------
 *
 * row_jsonb.c
 *		Turn a heap tuple into a jsonb object without leaving C.
 *
 * The audit trigger runs inside every write to an audited table, so it
 * cannot afford to_jsonb() through SPI.  Instead each column is mapped to
 * the jsonb kind to_jsonb() would give it (number, boolean, ISO date string,
 * array, nested object or jsonb, or the type's text output) and pushed
 * straight into a JsonbParseState.  The decision and output function for
 * each type are cached, so the hot path does no catalog lookups.  Types
 * with their own cast to json (hstore, say) come out as their text form.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/typcache.h"

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
	RJ_ARRAY,
	RJ_COMPOSITE,
	RJ_TEXT
} RjKind;

/* How values of one type become jsonb; cached per type oid. */
typedef struct RjType
{
	Oid			typid;			/* hash key */
	Oid			basetype;		/* typid with domains stripped */
	RjKind		kind;
	FmgrInfo	output;			/* RJ_TEXT, RJ_JSON, RJ_FLOAT */
	struct RjType *element;		/* RJ_ARRAY */
	int16		elemlen;		/* RJ_ARRAY */
	bool		elembyval;
	char		elemalign;
} RjType;

static HTAB *rj_types = NULL;

static RjType *
rj_type(Oid typid)
{
	RjType	   *t;
	bool		found;

	if (rj_types == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RjType);
		ctl.hcxt = TopMemoryContext;
		rj_types = hash_create("eds row_jsonb types", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	t = hash_search(rj_types, &typid, HASH_FIND, NULL);
	if (t)
		return t;

	/* Work out the entry before inserting it, so errors leave no half entry. */
	{
		RjType		tmp;
		Oid			base = getBaseType(typid);
		Oid			elemtype = get_element_type(base);

		memset(&tmp, 0, sizeof(tmp));
		tmp.typid = typid;
		tmp.basetype = base;
		switch (base)
		{
			case BOOLOID:
				tmp.kind = RJ_BOOL;
				break;
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case OIDOID:
				tmp.kind = RJ_INTEGER;
				break;
			case NUMERICOID:
				tmp.kind = RJ_NUMERIC;
				break;
			case FLOAT4OID:
			case FLOAT8OID:
				tmp.kind = RJ_FLOAT;
				break;
			case DATEOID:
			case TIMESTAMPOID:
			case TIMESTAMPTZOID:
				tmp.kind = RJ_DATETIME;
				break;
			case JSONBOID:
				tmp.kind = RJ_JSONB;
				break;
			case JSONOID:
				tmp.kind = RJ_JSON;
				break;
			default:
				if (OidIsValid(elemtype))
					tmp.kind = RJ_ARRAY;
				else if (type_is_rowtype(base))
					tmp.kind = RJ_COMPOSITE;
				else
					tmp.kind = RJ_TEXT;
				break;
		}

		if (tmp.kind == RJ_TEXT || tmp.kind == RJ_JSON || tmp.kind == RJ_FLOAT)
		{
			Oid			outfunc;
			bool		isvarlena;

			getTypeOutputInfo(base, &outfunc, &isvarlena);
			fmgr_info_cxt(outfunc, &tmp.output, TopMemoryContext);
		}
		if (tmp.kind == RJ_ARRAY)
		{
			tmp.element = rj_type(elemtype);
			get_typlenbyvalalign(elemtype, &tmp.elemlen, &tmp.elembyval, &tmp.elemalign);
		}

		t = hash_search(rj_types, &typid, HASH_ENTER, &found);
		*t = tmp;
	}
	return t;
}

static void
rj_set_string(JsonbValue *jv, char *str)
{
	jv->type = jbvString;
	jv->val.string.val = str;
	jv->val.string.len = strlen(str);
}

static void rj_push_value(JsonbParseState **state, JsonbIteratorToken token,
						  RjType *type, Datum value, bool isnull);

/* Push the fields of a tuple as a jsonb object; returns the object. */
static JsonbValue *
rj_push_tuple(JsonbParseState **state, HeapTupleHeader header, TupleDesc tupdesc)
{
	HeapTupleData tuple;

	tuple.t_len = HeapTupleHeaderGetDatumLength(header);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = header;

	pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		JsonbValue	key;
		bool		isnull;
		Datum		value;

		if (att->attisdropped)
			continue;
		rj_set_string(&key, NameStr(att->attname));
		pushJsonbValue(state, WJB_KEY, &key);
		value = heap_getattr(&tuple, i + 1, tupdesc, &isnull);
		rj_push_value(state, WJB_VALUE, rj_type(att->atttypid), value, isnull);
	}
	return pushJsonbValue(state, WJB_END_OBJECT, NULL);
}

/* Push one dimension of an array (nested arrays for more dimensions). */
static void
rj_push_array_dim(JsonbParseState **state, RjType *elem, int ndim, int *dims,
				  int dim, Datum *values, bool *nulls, int *pos)
{
	pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < dims[dim]; i++)
	{
		if (dim + 1 < ndim)
			rj_push_array_dim(state, elem, ndim, dims, dim + 1, values, nulls, pos);
		else
		{
			rj_push_value(state, WJB_ELEM, elem, values[*pos], nulls[*pos]);
			(*pos)++;
		}
	}
	pushJsonbValue(state, WJB_END_ARRAY, NULL);
}

/* Push one value as what to_jsonb() would make of it. */
static void
rj_push_value(JsonbParseState **state, JsonbIteratorToken token,
			  RjType *type, Datum value, bool isnull)
{
	JsonbValue	jv;

	if (isnull)
	{
		jv.type = jbvNull;
		pushJsonbValue(state, token, &jv);
		return;
	}

	switch (type->kind)
	{
		case RJ_BOOL:
			jv.type = jbvBool;
			jv.val.boolean = DatumGetBool(value);
			break;
		case RJ_INTEGER:
			{
				int64		v;

				if (type->basetype == INT2OID)
					v = DatumGetInt16(value);
				else if (type->basetype == INT4OID)
					v = DatumGetInt32(value);
				else if (type->basetype == OIDOID)
					v = DatumGetObjectId(value);
				else
					v = DatumGetInt64(value);
				jv.type = jbvNumeric;
				jv.val.numeric = int64_to_numeric(v);
				break;
			}
		case RJ_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				/* jsonb numbers cannot hold NaN or infinity: to_jsonb uses text */
				if (numeric_is_nan(num) || numeric_is_inf(num))
					rj_set_string(&jv, numeric_normalize(num));
				else
				{
					jv.type = jbvNumeric;
					jv.val.numeric = num;
				}
				break;
			}
		case RJ_FLOAT:
			{
				/*
				 * Go through the type's own text form, as to_jsonb does, so
				 * a real 0.1 stays 0.1 instead of its float8 widening.
				 */
				char	   *text = OutputFunctionCall(&type->output, value);

				if (strcmp(text, "NaN") == 0 || strcmp(text, "Infinity") == 0 ||
					strcmp(text, "-Infinity") == 0)
					rj_set_string(&jv, text);
				else
				{
					jv.type = jbvNumeric;
					jv.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
																		 CStringGetDatum(text),
																		 ObjectIdGetDatum(InvalidOid),
																		 Int32GetDatum(-1)));
				}
				break;
			}
		case RJ_DATETIME:
			rj_set_string(&jv, JsonEncodeDateTime(NULL, value, type->basetype, NULL));
			break;
		case RJ_JSONB:
		case RJ_JSON:
			{
				Jsonb	   *jb;

				if (type->kind == RJ_JSONB)
					jb = DatumGetJsonbP(value);
				else
					jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															CStringGetDatum(OutputFunctionCall(&type->output, value))));
				/* a binary container is unpacked into the parse state */
				jv.type = jbvBinary;
				jv.val.binary.data = &jb->root;
				jv.val.binary.len = VARSIZE(jb) - VARHDRSZ;
				break;
			}
		case RJ_ARRAY:
			{
				ArrayType  *arr = DatumGetArrayTypeP(value);
				Datum	   *values;
				bool	   *nulls;
				int			count;
				int			pos = 0;

				deconstruct_array(arr, ARR_ELEMTYPE(arr), type->elemlen,
								  type->elembyval, type->elemalign,
								  &values, &nulls, &count);
				if (ARR_NDIM(arr) == 0)
				{
					pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
					pushJsonbValue(state, WJB_END_ARRAY, NULL);
				}
				else
					rj_push_array_dim(state, type->element, ARR_NDIM(arr),
									  ARR_DIMS(arr), 0, values, nulls, &pos);
				return;
			}
		case RJ_COMPOSITE:
			{
				HeapTupleHeader header = DatumGetHeapTupleHeader(value);
				TupleDesc	tupdesc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(header),
															 HeapTupleHeaderGetTypMod(header));

				rj_push_tuple(state, header, tupdesc);
				ReleaseTupleDesc(tupdesc);
				return;
			}
		case RJ_TEXT:
			rj_set_string(&jv, OutputFunctionCall(&type->output, value));
			break;
	}
	pushJsonbValue(state, token, &jv);
}

Jsonb *
eds_tuple_to_jsonb(HeapTuple tuple, TupleDesc tupdesc)
{
	JsonbParseState *state = NULL;

	return JsonbValueToJsonb(rj_push_tuple(&state, tuple->t_data, tupdesc));
}
