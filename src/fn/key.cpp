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
#include "utils/rel.h"
}

namespace bemi {
namespace {

// What BemiPrimaryKey answered for one table: the text (palloc'd), or why there is none.
struct KeyAnswer {
	text *key;
	bool is_table;
};

// The relation is opened AccessShareLock (a time-travel query holds that lock already), kept
// until the end of the transaction as every lock of a reading query is.
text *KeyText(Oid relid, Jsonb *image) {
	KeyAnswer answer = PgCall([&]() {
		KeyAnswer a{nullptr, false};
		Relation rel = relation_open(relid, AccessShareLock);
		a.is_table =
		    rel->rd_rel->relkind == RELKIND_RELATION || rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;
		if (a.is_table)
			a.key = BemiPrimaryKey(rel, image);
		relation_close(rel, NoLock);
		return a;
	});
	if (!answer.is_table)
		throw Error(ERRCODE_WRONG_OBJECT_TYPE, fmt::format("relation with OID {} is not a table", relid),
		            "bemi records changes of tables only.");
	return answer.key;
}

} // namespace
} // namespace bemi

extern "C" text *BemiKeyText(Oid relid, Jsonb *image) {
	return bemi::Enter([&] { return bemi::KeyText(relid, image); });
}
