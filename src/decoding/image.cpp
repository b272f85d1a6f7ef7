// image.cpp: before/after images, built as jsonb straight from decoded tuples, and the rule that
// says which types are recorded as text. Runs inside logical decoding (the worker, a superuser, and
// any session that reads a slot with the bemi plugin); also from SQL (bemi_json_is_text, the
// primary key through decoding.h).
//
// An image is exactly to_jsonb() of the row (sql/images.sql compares them key by key), built
// without going through to_jsonb's per-row catalog lookups, text round trips and key sorting.
// It must run no code that an ordinary role could have written. to_jsonb would: it calls a type's
// cast to json, and the owner of a type may create one. A column whose conversion would call a
// function that is not a superuser's C code is recorded as its text output instead
// (sql/security_decoding.sql).
//
// Everything here is raw PostgreSQL, called inside bemi::PgCall (one per image): plain C-style
// code, nothing with a destructor. The hot path is ImageOf: every change, every column.
#include "image.hpp"

#include <cstring>

extern "C" {
#include "access/detoast.h"
#include "bemi/bemi.h"
#include "bemi/secret.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/transam.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_coerce.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
}

namespace bemi {
namespace {

// How deep the type walk goes into arrays, composites and domains before it gives up.
constexpr int kMaxTypeDepth = 16;

// Whether a cast function may run inside decoding: C or internal code owned by a superuser, which
// no ordinary role can have written or can rewrite (an extension's cast, like hstore's, is one).
// Not a polymorphic one, though (a cast WITH FUNCTION to_json(anyelement)): called as a cast,
// without an expression to resolve its types from, it can only fail.
bool IsTrustedCastFunction(Oid function) {
	HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	if (!HeapTupleIsValid(tuple))
		return false;
	auto proc = (Form_pg_proc)GETSTRUCT(tuple);
	bool trusted = (proc->prolang == ClanguageId || proc->prolang == INTERNALlanguageId) &&
	               superuser_arg(proc->proowner);
	for (int i = 0; i < proc->pronargs; i++)
		trusted &= !IsPolymorphicType(proc->proargtypes.values[i]);
	ReleaseSysCache(tuple);
	return trusted;
}

// The function of the cast from type to target, found as to_jsonb finds it, or InvalidOid.
Oid CastFunction(Oid type, Oid target) {
	Oid function = InvalidOid;
	if (find_coercion_pathway(target, type, COERCION_EXPLICIT, &function) != COERCION_PATH_FUNC)
		return InvalidOid;
	return function;
}

// Whether to_jsonb may be left to convert a scalar type that is not built in (an enum, a range,
// a multirange, a superuser's base type): it calls the type's cast to json, if any, so that cast
// must be trusted, and so must a cast to jsonb, which to_jsonb ignores, should that ever change.
bool CastsAreTrusted(Oid type) {
	Oid to_json = CastFunction(type, JSONOID);
	Oid to_jsonb = CastFunction(type, JSONBOID);
	return (!OidIsValid(to_json) || IsTrustedCastFunction(to_json)) &&
	       (!OidIsValid(to_jsonb) || IsTrustedCastFunction(to_jsonb));
}

// How a column of this (base) type becomes JSON. Where to_jsonb would run someone's code, the
// value's output text, which is what to_jsonb gives for a type without a cast. Output functions
// are safe to call: only a superuser can create a type with its own (a base type); an ordinary
// role's enums, ranges, composites and domains use built-in ones.
ColumnKind KindOf(Oid type, List **composites) {
	switch (type) {
	case BOOLOID:
		return ColumnKind::Bool;
	case INT2OID:
	case INT4OID:
	case INT8OID:
		return ColumnKind::Int;
	case NUMERICOID:
		return ColumnKind::Numeric;
	case FLOAT4OID:
	case FLOAT8OID:
		return ColumnKind::Float;
	case TEXTOID:
	case VARCHAROID:
		return ColumnKind::Text;
	case JSONBOID:
		return ColumnKind::Jsonb;
	case DATEOID:
	case TIMESTAMPOID:
	case TIMESTAMPTZOID:
		return ColumnKind::DateTime;
	case JSONOID:
		return ColumnKind::ToJsonb;
	default:
		break;
	}
	// Arrays and composites: to_jsonb's, unless it would meet an untrusted cast inside.
	if (OidIsValid(get_element_type(type)) || type_is_rowtype(type))
		return RunsUntrustedCode(type, composites) ? ColumnKind::Output : ColumnKind::ToJsonb;
	// Any other type: its output text, unless it is not built in and has a trusted cast to json
	// (hstore's), which to_jsonb then calls. A type without a cast never reaches to_jsonb, whose
	// own lookup of casts at run time could otherwise see a cast this plan has not seen yet.
	if (type >= FirstNormalObjectId && OidIsValid(CastFunction(type, JSONOID)) && CastsAreTrusted(type))
		return ColumnKind::ToJsonb;
	return ColumnKind::Output;
}

void SetString(JsonbValue *v, char *str) {
	v->type = jbvString;
	v->val.string.val = str;
	v->val.string.len = strlen(str);
}

// A jsonb document as a value inside another: scalars unwrapped, containers by reference.
void SetJsonb(JsonbValue *v, Jsonb *jb) {
	if (JB_ROOT_IS_SCALAR(jb))
		JsonbExtractScalar(&jb->root, v);
	else {
		v->type = jbvBinary;
		v->val.binary.data = &jb->root;
		v->val.binary.len = VARSIZE(jb) - VARHDRSZ;
	}
}

void ColumnValue(const ColumnPlan &col, Datum value, JsonbValue *v) {
	switch (col.kind) {
	case ColumnKind::Bool:
		v->type = jbvBool;
		v->val.boolean = DatumGetBool(value);
		break;
	case ColumnKind::Int:
		v->type = jbvNumeric;
		v->val.numeric = int64_to_numeric(col.type == INT2OID   ? DatumGetInt16(value)
		                                  : col.type == INT4OID ? DatumGetInt32(value)
		                                                        : DatumGetInt64(value));
		break;
	case ColumnKind::Numeric: {
		Numeric n = DatumGetNumeric(value);
		if (numeric_is_nan(n) || numeric_is_inf(n))
			SetString(v, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n))));
		else {
			v->type = jbvNumeric;
			v->val.numeric = n;
		}
		break;
	}
	case ColumnKind::Float: {
		char *text = OutputFunctionCall(const_cast<FmgrInfo *>(&col.output), value);
		if (IsValidJsonNumber(text, strlen(text))) {
			v->type = jbvNumeric;
			v->val.numeric = DatumGetNumeric(DirectFunctionCall3(
			    numeric_in, CStringGetDatum(text), ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
		} else
			SetString(v, text);
		break;
	}
	case ColumnKind::Text: {
		text *t = DatumGetTextPP(value);
		v->type = jbvString;
		v->val.string.val = VARDATA_ANY(t);
		v->val.string.len = VARSIZE_ANY_EXHDR(t);
		break;
	}
	case ColumnKind::Jsonb:
		SetJsonb(v, DatumGetJsonbP(value));
		break;
	case ColumnKind::DateTime:
		SetString(v, JsonEncodeDateTime(nullptr, value, col.type, nullptr));
		break;
	case ColumnKind::Output:
		SetString(v, OutputFunctionCall(const_cast<FmgrInfo *>(&col.output), value));
		break;
	case ColumnKind::ToJsonb:
		SetJsonb(v, DatumGetJsonbP(FunctionCall1(const_cast<FmgrInfo *>(&col.to_jsonb), value)));
		break;
	}
}

// What a mask rule leaves of a value: its keyed hash ("hmac:" and 64 hex digits of the HMAC of its
// output text, under a key of this database that no role can read), or the marker. A server
// without a key gives the marker: the value never shows.
void MaskedValue(const ColumnPlan &col, Datum value, JsonbValue *v) {
	if (col.mask == Mask::Hash) {
		char *text = OutputFunctionCall(const_cast<FmgrInfo *>(&col.output), value);
		char *hashed = (char *)palloc(sizeof(BEMI_MASK_HASH_PREFIX) + BEMI_MAC_HEX_LEN);
		memcpy(hashed, BEMI_MASK_HASH_PREFIX, sizeof(BEMI_MASK_HASH_PREFIX) - 1);
		if (BemiMaskHash(MyDatabaseId, text, strlen(text), hashed + sizeof(BEMI_MASK_HASH_PREFIX) - 1)) {
			SetString(v, hashed);
			return;
		}
	}
	SetString(v, const_cast<char *>(BEMI_MASK_MARKER));
}

bool IsUnchangedToast(Form_pg_attribute att, Datum value, bool isnull) {
	return !isnull && att->attlen == -1 && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value));
}

void AppendJsonbValue(StringInfo out, JsonbValue *v, bool bare_string) {
	if (bare_string && v->type == jbvString)
		appendBinaryStringInfo(out, v->val.string.val, v->val.string.len);
	else if (bare_string && v->type == jbvNumeric)
		appendStringInfoString(
		    out, DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric))));
	else {
		Jsonb *j = JsonbValueToJsonb(v);
		JsonbToCString(out, &j->root, VARSIZE(j));
	}
}

} // namespace

// It mirrors jsonb_categorize_type (PostgreSQL 15's jsonb.c; json_categorize_type in 16+): domains
// are looked through, arrays are walked into their elements and composites into their columns, and
// only a type that is none of these and not built in has its cast to json called. Row types known
// only at run time, and types nested deeper than kMaxTypeDepth, count as untrusted.
bool RunsUntrustedCode(Oid type, List **composites, int depth) {
	if (depth > kMaxTypeDepth)
		return true;
	type = getBaseType(type);
	Oid element = get_element_type(type);
	if (OidIsValid(element))
		return RunsUntrustedCode(element, composites, depth + 1);
	if (type == ANYARRAYOID || type == RECORDARRAYOID || type == RECORDOID)
		return true;
	if (type_is_rowtype(type)) {
		// ALTER TYPE changes the composite's relation, not the types that contain it.
		if (composites != nullptr)
			*composites = lappend_oid(*composites, get_typ_typrelid(type));
		TupleDesc desc = lookup_rowtype_tupdesc_copy(type, -1);
		bool untrusted = false;
		for (int i = 0; i < desc->natts && !untrusted; i++) {
			Form_pg_attribute att = TupleDescAttr(desc, i);
			if (!att->attisdropped)
				untrusted = RunsUntrustedCode(att->atttypid, composites, depth + 1);
		}
		FreeTupleDesc(desc);
		return untrusted;
	}
	return type >= FirstNormalObjectId && !CastsAreTrusted(type);
}

void PlanColumn(Form_pg_attribute att, int attno, MemoryContext context, ColumnPlan *col, List **composites) {
	col->attno = attno;
	col->type = getBaseType(att->atttypid);
	col->kind = KindOf(col->type, composites);
	col->name = att->attname;
	col->name_len = strlen(NameStr(col->name));
	col->mask = Mask::None; // the rules' verdicts, if any, come after (relations.cpp)
	col->ignorable = false;
	if (col->kind == ColumnKind::Float || col->kind == ColumnKind::Output) {
		Oid output;
		bool varlena;
		getTypeOutputInfo(col->type, &output, &varlena);
		fmgr_info_cxt(output, &col->output, context);
	} else if (col->kind == ColumnKind::ToJsonb) {
		MemoryContext old = MemoryContextSwitchTo(context);
		fmgr_info_cxt(F_TO_JSONB, &col->to_jsonb, context);
		col->to_jsonb.fn_expr = (Node *)makeFuncExpr(F_TO_JSONB, JSONBOID,
		                                             list_make1(makeNullConst(att->atttypid, -1, InvalidOid)),
		                                             InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		MemoryContextSwitchTo(old);
	}
}

bool KeyBefore(const ColumnPlan &a, const ColumnPlan &b) {
	if (a.name_len != b.name_len)
		return a.name_len < b.name_len;
	return memcmp(NameStr(a.name), NameStr(b.name), a.name_len) < 0;
}

Jsonb *ImageOf(const RecordedRelation &plan, Relation rel, HeapTuple tuple, HeapTuple old_tuple) {
	TupleDesc desc = RelationGetDescr(rel);
	int natts = desc->natts;
	int ncolumns = (int)plan.columns().size();
	const ColumnPlan *columns = plan.columns().data();
	auto values = (Datum *)palloc(natts * sizeof(Datum));
	auto nulls = (bool *)palloc(natts * sizeof(bool));
	Datum *old_values = nullptr;
	bool *old_nulls = nullptr;
	JsonbValue object;
	JsonbPair *pairs;
	bool nested = false;

	heap_deform_tuple(tuple, desc, values, nulls);
	object.type = jbvObject;
	object.val.object.nPairs = ncolumns;
	object.val.object.pairs = pairs = (JsonbPair *)palloc(sizeof(JsonbPair) * Max(ncolumns, 1));
	for (int c = 0; c < ncolumns; c++) {
		const ColumnPlan &col = columns[c];
		int i = col.attno;
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (IsUnchangedToast(att, values[i], nulls[i])) {
			// Not in the WAL record; REPLICA IDENTITY FULL's old row has it.
			if (old_tuple && old_values == nullptr) {
				old_values = (Datum *)palloc(natts * sizeof(Datum));
				old_nulls = (bool *)palloc(natts * sizeof(bool));
				heap_deform_tuple(old_tuple, desc, old_values, old_nulls);
			}
			if (old_values && !IsUnchangedToast(att, old_values[i], old_nulls[i])) {
				values[i] = old_values[i];
				nulls[i] = old_nulls[i];
			} else
				nulls[i] = true; // not available anywhere: recorded as null
		}
		pairs[c].key.type = jbvString;
		pairs[c].key.val.string.val = const_cast<char *>(NameStr(col.name));
		pairs[c].key.val.string.len = col.name_len;
		pairs[c].order = c;
		if (nulls[i])
			pairs[c].value.type = jbvNull;
		else if (col.mask != Mask::None)
			MaskedValue(col, values[i], &pairs[c].value);
		else
			ColumnValue(col, values[i], &pairs[c].value);
		nested |= pairs[c].value.type == jbvBinary;
	}
	if (nested) {
		// jsonb, arrays, composites: the slower builder copies nested documents in.
		JsonbParseState *state = nullptr;
		pushJsonbValue(&state, WJB_BEGIN_OBJECT, nullptr);
		for (int c = 0; c < ncolumns; c++) {
			pushJsonbValue(&state, WJB_KEY, &pairs[c].key);
			pushJsonbValue(&state, WJB_VALUE, &pairs[c].value);
		}
		return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, nullptr));
	}
	// Keys are already in jsonb order and unique: convert the object as it is.
	return JsonbValueToJsonb(&object);
}

// Whether two values of a column are the same bytes; a value left out of the WAL (an unchanged
// TOASTed one) is the same, one that cannot be read without a TOAST fetch is not.
static bool SameValue(Form_pg_attribute att, Datum a, bool a_null, Datum b, bool b_null) {
	if (a_null || b_null)
		return a_null && b_null;
	if (att->attlen != -1)
		return datumIsEqual(a, b, att->attbyval, att->attlen);
	auto va = (struct varlena *)DatumGetPointer(a);
	auto vb = (struct varlena *)DatumGetPointer(b);
	if (VARATT_IS_EXTERNAL_ONDISK(vb))
		return true;
	if (VARATT_IS_EXTERNAL_ONDISK(va))
		return false;
	if (VARATT_IS_EXTENDED(va))
		va = detoast_attr(va);
	if (VARATT_IS_EXTENDED(vb))
		vb = detoast_attr(vb);
	return VARSIZE_ANY_EXHDR(va) == VARSIZE_ANY_EXHDR(vb) &&
	       memcmp(VARDATA_ANY(va), VARDATA_ANY(vb), VARSIZE_ANY_EXHDR(va)) == 0;
}

bool ChangesOnlyIgnorable(const RecordedRelation &plan, Relation rel, HeapTuple old_tuple,
                          HeapTuple new_tuple) {
	TupleDesc desc = RelationGetDescr(rel);
	int natts = desc->natts;
	auto old_values = (Datum *)palloc(natts * sizeof(Datum));
	auto old_nulls = (bool *)palloc(natts * sizeof(bool));
	auto new_values = (Datum *)palloc(natts * sizeof(Datum));
	auto new_nulls = (bool *)palloc(natts * sizeof(bool));
	heap_deform_tuple(old_tuple, desc, old_values, old_nulls);
	heap_deform_tuple(new_tuple, desc, new_values, new_nulls);
	// Every live column of the descriptor, masked-out ones too: a change the plan does not show is
	// still a change.
	for (int i = 0; i < natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);
		if (att->attisdropped || SameValue(att, old_values[i], old_nulls[i], new_values[i], new_nulls[i]))
			continue;
		bool ignorable = false;
		for (const ColumnPlan &col : plan.columns())
			if (col.attno == i)
				ignorable = col.ignorable;
		if (!ignorable)
			return false;
	}
	return true;
}

// Without REPLICA IDENTITY FULL an old row holds only the replica identity columns, the others
// being null: keep just the columns PostgreSQL really provided.
Jsonb *IdentityImage(Relation rel, Jsonb *image) {
	Bitmapset *key = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
	TupleDesc desc = RelationGetDescr(rel);
	JsonbParseState *state = nullptr;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, nullptr);
	for (int i = 0; i < desc->natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		JsonbValue k, v;

		if (att->attisdropped || !bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, key))
			continue;
		if (getKeyJsonValueFromContainer(&image->root, name, strlen(name), &v) == nullptr)
			continue;
		k.type = jbvString;
		k.val.string.val = const_cast<char *>(name);
		k.val.string.len = strlen(name);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, nullptr));
}

Jsonb *EmptyImage() {
	JsonbParseState *state = nullptr;
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, nullptr);
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, nullptr));
}

// The value itself for a one-column key, a JSON array for a composite key.
text *PrimaryKeyText(const RecordedRelation &plan, Jsonb *image) {
	const std::vector<NameData> &key = plan.primary_key();
	int npk = (int)key.size();
	StringInfoData out;

	// Only an object has columns: an array read as one would be read past its end.
	if (image == nullptr || !JB_ROOT_IS_OBJECT(image) || JB_ROOT_COUNT(image) == 0 || npk == 0)
		return nullptr;
	initStringInfo(&out);
	if (npk > 1)
		appendStringInfoChar(&out, '[');
	for (int k = 0; k < npk; k++) {
		const char *name = NameStr(key[k]);
		JsonbValue found;

		if (k > 0)
			appendStringInfoString(&out, ", ");
		if (getKeyJsonValueFromContainer(&image->root, name, strlen(name), &found) == nullptr)
			found.type = jbvNull;
		AppendJsonbValue(&out, &found, npk == 1);
	}
	if (npk > 1)
		appendStringInfoChar(&out, ']');
	return cstring_to_text_with_len(out.data, out.len);
}

Jsonb *ReservedNote(const char *key, const char *text) {
	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, key);
	appendStringInfoString(&buf, ": ");
	escape_json(&buf, text);
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

} // namespace bemi
