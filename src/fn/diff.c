/*
 * diff.c: bemi_diff(before, after), what changed between two images as {"column": [old, new]}.
 *
 * Every history read computes it for every change it returns, so it walks the two jsonb objects
 * directly: no SQL function call, no set of keys. Values compare as jsonb's = does (1.0 = 1).
 * A column missing on one side is null there. NULL is read as {}.
 */
#include "postgres.h"

#include "bemi/bemi.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(bemi_diff);

static JsonbContainer *
ObjectContainer(Jsonb *image, const char *which)
{
	if (image == NULL)
		return NULL;
	if (!JB_ROOT_IS_OBJECT(image))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("bemi_diff: the %s image must be a JSON object", which)));
	return &image->root;
}

/* The value of top-level key `key` in `obj`, or NULL. */
static JsonbValue *
Lookup(JsonbContainer *obj, JsonbValue *key)
{
	if (obj == NULL)
		return NULL;
	return getKeyJsonValueFromContainer(obj, key->val.string.val, key->val.string.len, NULL);
}

/* jsonb equality of two values of an object (scalars, or nested containers). */
static bool
SameValue(JsonbValue *a, JsonbValue *b)
{
	JsonbContainer *ca;
	JsonbContainer *cb;

	if ((a->type == jbvBinary) != (b->type == jbvBinary))
		return false;
	if (a->type == jbvBinary)
	{
		ca = a->val.binary.data;
		cb = b->val.binary.data;
	}
	else
	{
		if (a->type != b->type)
			return false;
		ca = &JsonbValueToJsonb(a)->root;
		cb = &JsonbValueToJsonb(b)->root;
	}
	return compareJsonbContainers(ca, cb) == 0;
}

static void
PushPair(JsonbParseState **state, JsonbValue *key, JsonbValue *old_value, JsonbValue *new_value)
{
	JsonbValue null_value = {.type = jbvNull};

	pushJsonbValue(state, WJB_KEY, key);
	pushJsonbValue(state, WJB_BEGIN_ARRAY, NULL);
	pushJsonbValue(state, WJB_ELEM, old_value ? old_value : &null_value);
	pushJsonbValue(state, WJB_ELEM, new_value ? new_value : &null_value);
	pushJsonbValue(state, WJB_END_ARRAY, NULL);
}

/* Adds the keys of `from` that differ in `other`; with `only_missing`, those absent there. */
static void
AddDifferences(JsonbParseState **state, JsonbContainer *from, JsonbContainer *other, bool from_is_before,
			   bool only_missing)
{
	JsonbIterator *it;
	JsonbValue key;
	JsonbIteratorToken token;

	if (from == NULL)
		return;
	it = JsonbIteratorInit(from);
	while ((token = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
	{
		JsonbValue value;
		JsonbValue *there;

		if (token != WJB_KEY)
			continue;
		token = JsonbIteratorNext(&it, &value, true);
		Assert(token == WJB_VALUE);
		there = Lookup(other, &key);
		if (there != NULL && (only_missing || SameValue(&value, there)))
			continue;
		if (from_is_before)
			PushPair(state, &key, &value, there);
		else
			PushPair(state, &key, there, &value);
	}
}

Datum
bemi_diff(PG_FUNCTION_ARGS)
{
	JsonbContainer *before = ObjectContainer(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0), "before");
	JsonbContainer *after = ObjectContainer(PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1), "after");
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	AddDifferences(&state, before, after, true, false); /* changed, or gone */
	AddDifferences(&state, after, before, false, true); /* new */
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}
