// key.cpp: bemi_primary_key(tbl, image), the primary-key text of a row image exactly as the output
// plugin writes it into bemi.changes.primary_key: the one rule (BemiPrimaryKey, decoding.h), which
// time travel uses to match a table's current rows to the trail. Runs in the caller's backend.
#include "fn.h"

#include "bemi/guard.hpp"

#include <fmt/format.h>

extern "C" {
#include "bemi/decoding.h" // a C header with no extern "C" of its own
#include "access/relation.h"
#include "catalog/pg_class.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/rel.h"
}

namespace bemi {
namespace {

// What BemiPrimaryKey answered for one relation: the text (palloc'd), or the relation's name when
// it is not a table.
struct KeyAnswer {
	text *key;
	const char *not_a_table;
};

// The relation is opened AccessShareLock (a time-travel query holds that lock already), kept
// until the end of the transaction as every lock of a reading query is.
text *KeyText(Oid relid, Jsonb *image) {
	KeyAnswer answer = PgCall([&]() {
		KeyAnswer a{nullptr, nullptr};
		Relation rel = relation_open(relid, AccessShareLock);
		char kind = rel->rd_rel->relkind;
		if (kind == RELKIND_RELATION || kind == RELKIND_PARTITIONED_TABLE)
			a.key = BemiPrimaryKey(rel, image);
		else
			a.not_a_table = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
		relation_close(rel, NoLock);
		return a;
	});
	if (answer.not_a_table)
		throw Error(ERRCODE_WRONG_OBJECT_TYPE, fmt::format("\"{}\" is not a table", answer.not_a_table),
		            "bemi records changes of tables only; views, sequences and foreign tables have no "
		            "primary key text.");
	return answer.key;
}

} // namespace
} // namespace bemi

extern "C" text *BemiKeyText(Oid relid, Jsonb *image) {
	return bemi::Enter([&] { return bemi::KeyText(relid, image); });
}
