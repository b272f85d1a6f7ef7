// diff.cpp: bemi_diff(before, after), what changed between two images as {"column": [old, new]}.
// Runs in the backend of whoever reads history: every history read computes it for every change
// it returns, so it walks the two jsonb objects directly (no SQL call, no set of keys), all of it
// in one PgCall. Values compare as jsonb's = does (1.0 = 1). A column missing on one side is null
// there. NULL is read as {}.
#include "fn.h"

#include "bemi/guard.hpp"

extern "C" {
#include "utils/jsonb.h"
}

namespace bemi {
namespace {

// The helpers below call PostgreSQL and own nothing: they run inside Diff's one PgCall.

// The value of top-level key `key` in `obj`, or nullptr.
JsonbValue *Lookup(JsonbContainer *obj, const JsonbValue &key) {
	if (obj == nullptr)
		return nullptr;
	return getKeyJsonValueFromContainer(obj, key.val.string.val, key.val.string.len, nullptr);
}

// jsonb equality of two values of an object (scalars, or nested containers).
bool SameValue(JsonbValue *a, JsonbValue *b) {
	if ((a->type == jbvBinary) != (b->type == jbvBinary))
		return false;
	if (a->type == jbvBinary)
		return compareJsonbContainers(a->val.binary.data, b->val.binary.data) == 0;
	if (a->type != b->type)
		return false;
	return compareJsonbContainers(&JsonbValueToJsonb(a)->root, &JsonbValueToJsonb(b)->root) == 0;
}

void PushPair(JsonbParseState **state, JsonbValue *key, JsonbValue *old_value, JsonbValue *new_value) {
	JsonbValue null_value{};
	null_value.type = jbvNull;
	pushJsonbValue(state, WJB_KEY, key);
	pushJsonbValue(state, WJB_BEGIN_ARRAY, nullptr);
	pushJsonbValue(state, WJB_ELEM, old_value ? old_value : &null_value);
	pushJsonbValue(state, WJB_ELEM, new_value ? new_value : &null_value);
	pushJsonbValue(state, WJB_END_ARRAY, nullptr);
}

enum class Side { Before, After };

// Adds the keys of `from` that differ in `other`; with `only_missing`, those absent there.
void AddDifferences(JsonbParseState **state, JsonbContainer *from, JsonbContainer *other, Side from_side,
                    bool only_missing) {
	if (from == nullptr)
		return;
	JsonbIterator *it = JsonbIteratorInit(from);
	JsonbValue key;
	JsonbIteratorToken token;
	while ((token = JsonbIteratorNext(&it, &key, true)) != WJB_DONE) {
		if (token != WJB_KEY)
			continue;
		JsonbValue value;
		token = JsonbIteratorNext(&it, &value, true);
		Assert(token == WJB_VALUE);
		JsonbValue *there = Lookup(other, key);
		if (there != nullptr && (only_missing || SameValue(&value, there)))
			continue;
		if (from_side == Side::Before)
			PushPair(state, &key, &value, there);
		else
			PushPair(state, &key, there, &value);
	}
}

// The object an image holds, or nullptr for a NULL image; anything else is the caller's mistake.
JsonbContainer *ObjectOf(Jsonb *image, const char *which) {
	if (image == nullptr)
		return nullptr;
	if (!JB_ROOT_IS_OBJECT(image))
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE,
		            std::string("bemi_diff: the ") + which + " image must be a JSON object");
	return &image->root;
}

Jsonb *Diff(Jsonb *before_image, Jsonb *after_image) {
	JsonbContainer *before = ObjectOf(before_image, "before");
	JsonbContainer *after = ObjectOf(after_image, "after");
	return PgCall([&]() {
		JsonbParseState *state = nullptr;
		pushJsonbValue(&state, WJB_BEGIN_OBJECT, nullptr);
		AddDifferences(&state, before, after, Side::Before, false); // changed, or gone
		AddDifferences(&state, after, before, Side::After, true);   // new
		return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, nullptr));
	});
}

} // namespace
} // namespace bemi

extern "C" Jsonb *BemiDiff(Jsonb *before, Jsonb *after) {
	return bemi::Enter([&] { return bemi::Diff(before, after); });
}
