/*
 * image.c: before/after images, built as jsonb straight from decoded tuples.
 *
 * An image is exactly to_jsonb() of the row (sql/images.sql compares them key by key), built
 * without going through to_jsonb's per-row catalog lookups, text round trips and key sorting.
 *
 * This runs inside logical decoding (the worker, a superuser, and any session that reads a slot
 * with the bemi plugin), so it must run no code that an ordinary role could have written.
 * to_jsonb would: it calls a type's cast to json, and the owner of a type may create one. A column
 * whose conversion would call a function that is not a superuser's C code is recorded as its text
 * output instead (sql/security_decoding.sql).
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/sysattr.h"
#include "access/htup_details.h"
#include "access/transam.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_coerce.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "common/jsonapi.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/numeric.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "bemi/decoding.h"

/*
 * How each column becomes a JSON value, worked out once per relation (and again after DDL).
 * Common types are converted here without a text round trip; everything else goes through
 * to_jsonb() of the single value, so the result is always what to_jsonb() of the row gives.
 */
typedef enum ColumnKind
{
	KIND_BOOL,
	KIND_INT,         /* int2/int4/int8: a JSON number */
	KIND_NUMERIC,     /* a number, or a string for NaN and infinities */
	KIND_FLOAT,       /* output text; a number when it is one */
	KIND_TEXT,        /* text, varchar: the string itself */
	KIND_JSONB,
	KIND_DATETIME,    /* date, timestamp, timestamptz: ISO 8601 */
	KIND_OUTPUT,      /* any other type with no JSON meaning, or one whose JSON conversion
					   * would run untrusted code: its output text */
	KIND_TO_JSONB     /* arrays, composites, json, types with trusted casts to json */
} ColumnKind;

/* How deep the type walk goes into arrays, composites and domains before it gives up. */
#define MAX_TYPE_DEPTH 16

typedef struct ColumnPlan
{
	int attno;        /* 0-based index in the tuple */
	ColumnKind kind;
	Oid type;         /* base type */
	FmgrInfo output;  /* KIND_FLOAT, KIND_OUTPUT */
	FmgrInfo to_jsonb; /* KIND_TO_JSONB: to_jsonb with this column's type as argument */
	JsonbValue key;
} ColumnPlan;

typedef struct ImagePlan
{
	Oid relid;        /* hash key */
	bool valid;
	MemoryContext context; /* everything below; deleted when the plan is rebuilt */
	int ncolumns;
	ColumnPlan *columns; /* in jsonb key order */
	int npk;             /* primary key columns, 0 without a primary key */
	char **pk_names;     /* in key order */
} ImagePlan;

static HTAB *image_plans = NULL;
static MemoryContext plan_context = NULL;
static bool stale_plans = false;     /* some plans are invalid and not freed yet */
static uint64 plan_invalidations = 0; /* counts invalidations, to notice one during a build */

/*
 * Any DDL, and any change to casts, functions, types or roles, may change how a column becomes
 * JSON (a cast to json created, its function given to another owner): every plan is rebuilt
 * before the next change decoded after it. Plans are only marked here, since one may be in use;
 * PlanFor frees them.
 */
static void
ForgetPlans(void)
{
	HASH_SEQ_STATUS scan;
	ImagePlan *plan;

	plan_invalidations++;
	if (image_plans == NULL)
		return;
	hash_seq_init(&scan, image_plans);
	while ((plan = hash_seq_search(&scan)) != NULL)
		plan->valid = false;
	stale_plans = true;
}

static void
ForgetPlansOnRelation(Datum arg, Oid relid)
{
	ForgetPlans();
}

static void
ForgetPlansOnCatalog(Datum arg, int cache_id, uint32 hash_value)
{
	ForgetPlans();
}

/* Frees every invalid plan, those of dropped relations too, so the worker does not leak on DDL. */
static void
DropStalePlans(void)
{
	HASH_SEQ_STATUS scan;
	ImagePlan *plan;

	hash_seq_init(&scan, image_plans);
	while ((plan = hash_seq_search(&scan)) != NULL)
	{
		if (plan->valid)
			continue;
		if (plan->context != NULL)
			MemoryContextDelete(plan->context);
		hash_search(image_plans, &plan->relid, HASH_REMOVE, NULL);
	}
	stale_plans = false;
}

/* jsonb orders object keys by length, then bytes. */
static int
CompareKeys(const void *a, const void *b)
{
	const JsonbValue *ka = &((const ColumnPlan *) a)->key;
	const JsonbValue *kb = &((const ColumnPlan *) b)->key;

	if (ka->val.string.len != kb->val.string.len)
		return ka->val.string.len < kb->val.string.len ? -1 : 1;
	return memcmp(ka->val.string.val, kb->val.string.val, ka->val.string.len);
}

/*
 * Whether a cast function may run inside decoding: C or internal code owned by a superuser, which
 * no ordinary role can have written or can rewrite (an extension's cast, like hstore's, is one).
 * Not a polymorphic one, though (a cast WITH FUNCTION to_json(anyelement)): called as a cast,
 * without an expression to resolve its types from, it can only fail.
 */
static bool
IsTrustedCastFunction(Oid function)
{
	HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	Form_pg_proc proc;
	bool trusted;

	if (!HeapTupleIsValid(tuple))
		return false;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	trusted = (proc->prolang == ClanguageId || proc->prolang == INTERNALlanguageId) &&
			  superuser_arg(proc->proowner);
	for (int i = 0; i < proc->pronargs; i++)
		trusted &= !IsPolymorphicType(proc->proargtypes.values[i]);
	ReleaseSysCache(tuple);
	return trusted;
}

/* The function of the cast from type to target, found as to_jsonb finds it, or InvalidOid. */
static Oid
CastFunction(Oid type, Oid target)
{
	Oid function = InvalidOid;

	if (find_coercion_pathway(target, type, COERCION_EXPLICIT, &function) != COERCION_PATH_FUNC)
		return InvalidOid;
	return function;
}

/*
 * Whether to_jsonb may be left to convert a scalar type that is not built in (an enum, a range,
 * a multirange, a superuser's base type): it calls the type's cast to json, if any, so that cast
 * must be trusted, and so must a cast to jsonb, which to_jsonb ignores, should that ever change.
 */
static bool
CastsAreTrusted(Oid type)
{
	Oid to_json = CastFunction(type, JSONOID);
	Oid to_jsonb = CastFunction(type, JSONBOID);

	return (!OidIsValid(to_json) || IsTrustedCastFunction(to_json)) &&
		   (!OidIsValid(to_jsonb) || IsTrustedCastFunction(to_jsonb));
}

/*
 * Whether to_jsonb of a value of this type could call an untrusted function. It mirrors
 * jsonb_categorize_type (PostgreSQL 15's jsonb.c; json_categorize_type in 16+): domains are
 * looked through, arrays are walked into their elements and composites into their columns, and
 * only a type that is none of these and not built in has its cast to json called. Row types known
 * only at run time, and types nested deeper than MAX_TYPE_DEPTH, count as untrusted.
 */
static bool
RunsUntrustedCode(Oid type, int depth)
{
	Oid element;

	if (depth > MAX_TYPE_DEPTH)
		return true;
	type = getBaseType(type);
	element = get_element_type(type);
	if (OidIsValid(element))
		return RunsUntrustedCode(element, depth + 1);
	if (type == ANYARRAYOID || type == RECORDARRAYOID || type == RECORDOID)
		return true;
	if (type_is_rowtype(type))
	{
		TupleDesc desc = lookup_rowtype_tupdesc_copy(type, -1);
		bool untrusted = false;

		for (int i = 0; i < desc->natts && !untrusted; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped)
				untrusted = RunsUntrustedCode(att->atttypid, depth + 1);
		}
		FreeTupleDesc(desc);
		return untrusted;
	}
	return type >= FirstNormalObjectId && !CastsAreTrusted(type);
}

/*
 * How a column of this (base) type becomes JSON. Where to_jsonb would run someone's code, the
 * value's output text, which is what to_jsonb gives for a type without a cast. Output functions
 * are safe to call: only a superuser can create a type with its own (a base type); an ordinary
 * role's enums, ranges, composites and domains use built-in ones.
 */
static ColumnKind
KindOf(Oid type)
{
	switch (type)
	{
		case BOOLOID:
			return KIND_BOOL;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return KIND_INT;
		case NUMERICOID:
			return KIND_NUMERIC;
		case FLOAT4OID:
		case FLOAT8OID:
			return KIND_FLOAT;
		case TEXTOID:
		case VARCHAROID:
			return KIND_TEXT;
		case JSONBOID:
			return KIND_JSONB;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return KIND_DATETIME;
		case JSONOID:
			return KIND_TO_JSONB;
		default:
			break;
	}
	/* Arrays and composites: to_jsonb's, unless it would meet an untrusted cast inside. */
	if (OidIsValid(get_element_type(type)) || type_is_rowtype(type))
		return RunsUntrustedCode(type, 0) ? KIND_OUTPUT : KIND_TO_JSONB;
	/*
	 * Any other type: its output text, unless it is not built in and has a trusted cast to json
	 * (hstore's), which to_jsonb then calls. A type without a cast never reaches to_jsonb, whose
	 * own lookup of casts at run time could otherwise see a cast this plan has not seen yet.
	 */
	if (type >= FirstNormalObjectId && OidIsValid(CastFunction(type, JSONOID)) && CastsAreTrusted(type))
		return KIND_TO_JSONB;
	return KIND_OUTPUT;
}

/* The primary key's column names, looked up once per plan rather than per change. */
static void
PlanPrimaryKey(Relation rel, ImagePlan *plan)
{
	HeapTuple index_tuple;
	Form_pg_index index;

	plan->npk = 0;
	plan->pk_names = NULL;
	RelationGetIndexList(rel); /* fills rd_pkindex */
	if (!OidIsValid(rel->rd_pkindex))
		return;
	index_tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(rel->rd_pkindex));
	if (!HeapTupleIsValid(index_tuple))
		return;
	index = (Form_pg_index) GETSTRUCT(index_tuple);
	plan->pk_names = palloc(sizeof(char *) * Max(index->indnkeyatts, 1));
	for (int k = 0; k < index->indnkeyatts; k++)
	{
		AttrNumber attnum = index->indkey.values[k];

		plan->pk_names[plan->npk++] = pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname));
	}
	ReleaseSysCache(index_tuple);
}

/*
 * The relation's column plan, built once and again after any invalidation (ForgetPlans). A plan
 * during whose build an invalidation arrived serves the caller once and is built again next time.
 */
static ImagePlan *
PlanFor(Relation rel)
{
	Oid relid = RelationGetRelid(rel);
	TupleDesc desc = RelationGetDescr(rel);
	ImagePlan *plan;
	bool found;
	MemoryContext old;
	uint64 invalidations;

	if (image_plans == NULL)
	{
		HASHCTL ctl;

		plan_context = AllocSetContextCreate(CacheMemoryContext, "bemi image plans", ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ImagePlan);
		ctl.hcxt = plan_context;
		image_plans = hash_create("bemi image plans", 128, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(ForgetPlansOnRelation, (Datum) 0);
		CacheRegisterSyscacheCallback(CASTSOURCETARGET, ForgetPlansOnCatalog, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, ForgetPlansOnCatalog, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, ForgetPlansOnCatalog, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, ForgetPlansOnCatalog, (Datum) 0);
	}
	plan = hash_search(image_plans, &relid, HASH_FIND, NULL);
	if (plan != NULL && plan->valid && plan->ncolumns <= desc->natts)
		return plan;
	if (stale_plans)
		DropStalePlans();
	plan = hash_search(image_plans, &relid, HASH_ENTER, &found);
	if (found && plan->context != NULL)
		MemoryContextDelete(plan->context); /* did not fit the relation, or its build failed */
	plan->valid = false;
	plan->context = NULL; /* should creating the context fail, nothing to free */
	plan->context = AllocSetContextCreate(plan_context, "bemi image plan", ALLOCSET_SMALL_SIZES);
	invalidations = plan_invalidations;

	old = MemoryContextSwitchTo(plan->context);
	plan->columns = palloc0(sizeof(ColumnPlan) * Max(desc->natts, 1));
	plan->ncolumns = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ColumnPlan *col;

		if (att->attisdropped)
			continue;
		col = &plan->columns[plan->ncolumns++];
		col->attno = i;
		col->type = getBaseType(att->atttypid);
		col->kind = KindOf(col->type);
		col->key.type = jbvString;
		col->key.val.string.val = pstrdup(NameStr(att->attname));
		col->key.val.string.len = strlen(col->key.val.string.val);
		if (col->kind == KIND_FLOAT || col->kind == KIND_OUTPUT)
		{
			Oid output;
			bool varlena;

			getTypeOutputInfo(col->type, &output, &varlena);
			fmgr_info_cxt(output, &col->output, plan->context);
		}
		else if (col->kind == KIND_TO_JSONB)
		{
			fmgr_info_cxt(F_TO_JSONB, &col->to_jsonb, plan->context);
			col->to_jsonb.fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
														  list_make1(makeNullConst(att->atttypid, -1, InvalidOid)),
														  InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		}
	}
	qsort(plan->columns, plan->ncolumns, sizeof(ColumnPlan), CompareKeys);
	PlanPrimaryKey(rel, plan);
	MemoryContextSwitchTo(old);
	plan->valid = invalidations == plan_invalidations;
	if (!plan->valid)
		stale_plans = true;
	return plan;
}

static void
SetString(JsonbValue *v, char *str)
{
	v->type = jbvString;
	v->val.string.val = str;
	v->val.string.len = strlen(str);
}

/* A jsonb document as a value inside another: scalars unwrapped, containers by reference. */
static void
SetJsonb(JsonbValue *v, Jsonb *jb)
{
	if (JB_ROOT_IS_SCALAR(jb))
		JsonbExtractScalar(&jb->root, v);
	else
	{
		v->type = jbvBinary;
		v->val.binary.data = &jb->root;
		v->val.binary.len = VARSIZE(jb) - VARHDRSZ;
	}
}

static void
ColumnValue(ColumnPlan *col, Datum value, JsonbValue *v)
{
	switch (col->kind)
	{
		case KIND_BOOL:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			break;
		case KIND_INT:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(col->type == INT2OID ? DatumGetInt16(value)
											  : col->type == INT4OID ? DatumGetInt32(value)
																	 : DatumGetInt64(value));
			break;
		case KIND_NUMERIC:
			{
				Numeric n = DatumGetNumeric(value);

				if (numeric_is_nan(n) || numeric_is_inf(n))
					SetString(v, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n))));
				else
				{
					v->type = jbvNumeric;
					v->val.numeric = n;
				}
				break;
			}
		case KIND_FLOAT:
			{
				char *text = OutputFunctionCall(&col->output, value);

				if (IsValidJsonNumber(text, strlen(text)))
				{
					v->type = jbvNumeric;
					v->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(text),
																		 ObjectIdGetDatum(InvalidOid),
																		 Int32GetDatum(-1)));
				}
				else
					SetString(v, text);
				break;
			}
		case KIND_TEXT:
			{
				text *t = DatumGetTextPP(value);

				v->type = jbvString;
				v->val.string.val = VARDATA_ANY(t);
				v->val.string.len = VARSIZE_ANY_EXHDR(t);
				break;
			}
		case KIND_JSONB:
			SetJsonb(v, DatumGetJsonbP(value));
			break;
		case KIND_DATETIME:
			SetString(v, JsonEncodeDateTime(NULL, value, col->type, NULL));
			break;
		case KIND_OUTPUT:
			SetString(v, OutputFunctionCall(&col->output, value));
			break;
		case KIND_TO_JSONB:
			SetJsonb(v, DatumGetJsonbP(FunctionCall1(&col->to_jsonb, value)));
			break;
	}
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
	ImagePlan *plan = PlanFor(rel);
	JsonbValue object;
	JsonbPair *pairs;
	bool nested = false;

	heap_deform_tuple(tuple, desc, values, nulls);
	object.type = jbvObject;
	object.val.object.nPairs = plan->ncolumns;
	object.val.object.pairs = pairs = palloc(sizeof(JsonbPair) * Max(plan->ncolumns, 1));
	for (int c = 0; c < plan->ncolumns; c++)
	{
		ColumnPlan *col = &plan->columns[c];
		int i = col->attno;
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (IsUnchangedToast(att, values[i], nulls[i]))
		{
			/* Not in the WAL record; REPLICA IDENTITY FULL's old row has it. */
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
		}
		pairs[c].key = col->key;
		pairs[c].order = c;
		if (nulls[i])
			pairs[c].value.type = jbvNull;
		else
			ColumnValue(col, values[i], &pairs[c].value);
		nested |= pairs[c].value.type == jbvBinary;
	}
	if (nested)
	{
		/* jsonb, arrays, composites: the slower builder copies nested documents in. */
		JsonbParseState *state = NULL;
		JsonbValue *result;

		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		for (int c = 0; c < plan->ncolumns; c++)
		{
			pushJsonbValue(&state, WJB_KEY, &pairs[c].key);
			pushJsonbValue(&state, WJB_VALUE, &pairs[c].value);
		}
		result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
		return JsonbValueToJsonb(result);
	}
	/* Keys are already in jsonb order and unique: convert the object as it is. */
	return JsonbValueToJsonb(&object);
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
	ImagePlan *plan;
	StringInfoData out;

	if (image == NULL || JB_ROOT_COUNT(image) == 0)
		return NULL;
	plan = PlanFor(rel);
	if (plan->npk == 0)
		return NULL;
	initStringInfo(&out);
	if (plan->npk > 1)
		appendStringInfoChar(&out, '[');
	for (int k = 0; k < plan->npk; k++)
	{
		const char *name = plan->pk_names[k];
		JsonbValue found;

		if (k > 0)
			appendStringInfoString(&out, ", ");
		if (getKeyJsonValueFromContainer(&image->root, name, strlen(name), &found) == NULL)
			found.type = jbvNull;
		AppendJsonbValue(&out, &found, plan->npk == 1);
	}
	if (plan->npk > 1)
		appendStringInfoChar(&out, ']');
	return cstring_to_text_with_len(out.data, out.len);
}

PG_FUNCTION_INFO_V1(bemi_json_is_text);

/*
 * bemi_json_is_text(regtype) → boolean: does bemi record values of this type as their output
 * text, because to_jsonb would run a function an ordinary role could have written? Time travel
 * renders primary keys with it exactly as the images were built, and without calling that
 * function itself (it may be run by a superuser on an untrusted role's table).
 */
Datum
bemi_json_is_text(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RunsUntrustedCode(PG_GETARG_OID(0), 0));
}
