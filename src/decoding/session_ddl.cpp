// session_ddl.cpp: a schema change of a recorded table, decoded (issue 15, "DDL").
//
// The backend that ran the statement emitted one signed message per table it changed
// (src/context/ddl_events.cpp), in its transaction, right after the statement. Here it becomes a
// change with operation 'DDL' in the same stream as the row changes around it: schema and table
// (the names the table's changes are recorded under), no primary key, before = {"object",
// "columns"} as the table was, after = {"command_tag", "object", "statement", "columns",
// "rewritten"} as the statement left it (no columns after a DROP), and the transaction's context
// and identity like any change. Tracking rules apply as to the table's rows: an ignored table or
// writer has no DDL rows either.
//
// Only a message whose MAC verifies for this transaction and whose payload carries the DDL tag is
// believed: anything else under the prefix (pg_logical_emit_message by any role) records nothing.
#include "session.hpp"

#include <cstring>

#include "rules.hpp"

extern "C" {
#include "bemi/bemi.h"
#include "bemi/secret.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
}

namespace bemi {
namespace {

// The fields of a DDL payload, pointing into palloc'd memory; ok is false when one is missing
// (a payload bemi's backend did not build: never, once its MAC verified).
struct DdlFields {
	bool ok;
	const char *schema;
	const char *table;
	Oid table_oid;
	Jsonb *before;
	Jsonb *after;
};

// Raw PostgreSQL: inside PgCall.
DdlFields ReadDdl(Jsonb *payload) {
	DdlFields fields = {};
	JsonbValue schema, table, oid, before, after;
	auto get = [&](const char *key, JsonbValue *value) {
		return getKeyJsonValueFromContainer(&payload->root, key, strlen(key), value) != nullptr;
	};
	if (!get("schema", &schema) || schema.type != jbvString || !get("table", &table) ||
	    table.type != jbvString || !get("table_oid", &oid) || oid.type != jbvNumeric ||
	    !get("before", &before) || before.type != jbvBinary || !get("after", &after) ||
	    after.type != jbvBinary)
		return fields;
	fields.schema = pnstrdup(schema.val.string.val, schema.val.string.len);
	fields.table = pnstrdup(table.val.string.val, table.val.string.len);
	fields.table_oid = static_cast<Oid>(
	    DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(oid.val.numeric))));
	fields.before = JsonbValueToJsonb(&before);
	fields.after = JsonbValueToJsonb(&after);
	fields.ok = true;
	return fields;
}

} // namespace

void Session::Ddl(ReorderBufferTXN *txn, XLogRecPtr lsn, Size size, const char *message) {
	Payload payload = Verify(txn, size, message);
	const Size tag_len = strlen(BEMI_DDL_PAYLOAD_TAG);
	if (!payload.verified || payload.len < tag_len || memcmp(payload.data, BEMI_DDL_PAYLOAD_TAG, tag_len) != 0)
		return;

	Rules &rules = Rules::Get();
	rules.Refresh(txn->xid);
	// Everything the change builds lives in its context, reset once it is emitted (left switched
	// on an error, as a C callback would leave it: PostgreSQL's error recovery resets it).
	MemoryContext old = PgCall([&]() { return MemoryContextSwitchTo(change_context_); });
	Jsonb *parsed = ParseObject(payload.data + tag_len, payload.len - tag_len);
	DdlFields fields = parsed ? PgCall([&]() { return ReadDdl(parsed); }) : DdlFields{};
	bool recorded = fields.ok;
	if (recorded && rules.IgnoresTable(fields.schema, fields.table)) {
		skipped_.table_rules++;
		recorded = false;
	} else if (recorded && WriterIgnored(rules)) {
		skipped_.writer_rules++;
		recorded = false;
	}
	PgCall([&]() {
		if (recorded) {
			BemiChange record = {};
			record.table_oid = fields.table_oid;
			record.schema = fields.schema;
			record.table = fields.table;
			record.operation = "DDL";
			record.primary_key = nullptr;
			record.before = fields.before;
			record.after = fields.after;
			Emit(txn, lsn, &record);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(change_context_);
	});
}

} // namespace bemi
