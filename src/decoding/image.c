/*
 * image.c: before/after images, built as jsonb straight from decoded tuples.
 *
 * An image is exactly to_jsonb() of the row: we call to_jsonb itself on the row datum, so every
 * type (numeric, json, arrays, composites, bytea, NaN ...) is rendered as users expect.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/sysattr.h"
#include "access/htup_details.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/syscache.h"

#include "bemi/decoding.h"

/* to_jsonb(anyelement) looks at its call expression for the argument type: give it a record. */
static FmgrInfo *
ToJsonbFunction(void)
{
	static FmgrInfo *flinfo = NULL;

	if (flinfo == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		FmgrInfo *f = palloc0(sizeof(FmgrInfo));

		fmgr_info(F_TO_JSONB, f);
		f->fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
										   list_make1(makeNullConst(RECORDOID, -1, InvalidOid)),
										   InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		flinfo = f;
		MemoryContextSwitchTo(old);
	}
	return flinfo;
}

static bool
IsUnchangedToast(Form_pg_attribute att, Datum value, bool isnull)
{
	return !isnull && att->attlen == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value));
}

Jsonb *
BemiImageFromTuple(Relation rel, HeapTuple tuple, HeapTuple old_tuple)
{
	TupleDesc desc = RelationGetDescr(rel);
	int natts = desc->natts;
	Datum *values = palloc(natts * sizeof(Datum));
	bool *nulls = palloc(natts * sizeof(bool));
	Datum *old_values = NULL;
	bool *old_nulls = NULL;
	bool rebuilt = false;
	HeapTuple row = tuple;

	heap_deform_tuple(tuple, desc, values, nulls);
	for (int i = 0; i < natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || !IsUnchangedToast(att, values[i], nulls[i]))
			continue;
		/* Unchanged TOASTed value: not in the WAL record; REPLICA IDENTITY FULL's old row has it. */
		if (old_tuple && old_values == NULL)
		{
			old_values = palloc(natts * sizeof(Datum));
			old_nulls = palloc(natts * sizeof(bool));
			heap_deform_tuple(old_tuple, desc, old_values, old_nulls);
		}
		if (old_values && !IsUnchangedToast(att, old_values[i], old_nulls[i]))
		{
			values[i] = old_values[i];
			nulls[i] = old_nulls[i];
		}
		else
			nulls[i] = true; /* not available anywhere: recorded as null */
		rebuilt = true;
	}
	if (rebuilt)
		row = heap_form_tuple(desc, values, nulls);

	{
		LOCAL_FCINFO(fcinfo, 1);
		Datum result;

		InitFunctionCallInfoData(*fcinfo, ToJsonbFunction(), 1, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = heap_copy_tuple_as_datum(row, desc);
		fcinfo->args[0].isnull = false;
		result = FunctionCallInvoke(fcinfo);
		if (fcinfo->isnull)
			elog(ERROR, "to_jsonb returned NULL for a row of \"%s\"", RelationGetRelationName(rel));
		return DatumGetJsonbP(result);
	}
}

/*
 * Without REPLICA IDENTITY FULL an old row holds only the replica identity columns, the others
 * being null: keep just the columns PostgreSQL really provided.
 */
Jsonb *
BemiIdentityImage(Relation rel, Jsonb *image)
{
	Bitmapset *key = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
	TupleDesc desc = RelationGetDescr(rel);
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		JsonbValue k, v;

		if (att->attisdropped || !bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, key))
			continue;
		if (getKeyJsonValueFromContainer(&image->root, name, strlen(name), &v) == NULL)
			continue;
		k.type = jbvString;
		k.val.string.val = (char *) name;
		k.val.string.len = strlen(name);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

Jsonb *
BemiEmptyImage(void)
{
	JsonbParseState *state = NULL;
	JsonbValue *v;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	v = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(v);
}

static void
AppendJsonbValue(StringInfo out, JsonbValue *v, bool bare_string)
{
	if (bare_string && v->type == jbvString)
		appendBinaryStringInfo(out, v->val.string.val, v->val.string.len);
	else if (bare_string && v->type == jbvNumeric)
		appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(numeric_out,
																		NumericGetDatum(v->val.numeric))));
	else
	{
		Jsonb *j = JsonbValueToJsonb(v);

		JsonbToCString(out, &j->root, VARSIZE(j));
	}
}

text *
BemiPrimaryKey(Relation rel, Jsonb *image)
{
	Oid pk_oid;
	HeapTuple index_tuple;
	Form_pg_index index;
	StringInfoData out;
	int nkeys;

	if (image == NULL || JB_ROOT_COUNT(image) == 0)
		return NULL;
	RelationGetIndexList(rel); /* fills rd_pkindex */
	pk_oid = rel->rd_pkindex;
	if (!OidIsValid(pk_oid))
		return NULL;
	index_tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pk_oid));
	if (!HeapTupleIsValid(index_tuple))
		return NULL;
	index = (Form_pg_index) GETSTRUCT(index_tuple);
	nkeys = index->indnkeyatts;

	initStringInfo(&out);
	if (nkeys > 1)
		appendStringInfoChar(&out, '[');
	for (int k = 0; k < nkeys; k++)
	{
		AttrNumber attnum = index->indkey.values[k];
		const char *name = NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname);
		JsonbValue found;

		if (k > 0)
			appendStringInfoString(&out, ", ");
		if (getKeyJsonValueFromContainer(&image->root, name, strlen(name), &found) == NULL)
		{
			found.type = jbvNull;
		}
		AppendJsonbValue(&out, &found, nkeys == 1);
	}
	if (nkeys > 1)
		appendStringInfoChar(&out, ']');
	ReleaseSysCache(index_tuple);
	return cstring_to_text_with_len(out.data, out.len);
}
