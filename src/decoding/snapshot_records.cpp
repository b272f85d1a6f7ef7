// snapshot_records.cpp: SNAPSHOT changes from the chunks of bemi_snapshot's worker
// (src/worker/snapshot.c, include/bemi/snapshot.h for the message).
//
// A chunk is a transactional message: its rows become SNAPSHOT changes at the message's place in
// its transaction, which commits where the rows had exactly these values (snapshot.c says why).
// Only a message bemi signed for this transaction counts: any role can emit one with our prefix,
// and a forged one would put rows in the trail that no table held. Images are built from the
// tuples exactly as for a row change (image.cpp, under the rules in force at that point of the
// stream): no user code runs, masks and ignored columns apply.
//
// Runs under bemi::Enter (plugin.cpp), in the decoding transaction with its historic snapshot,
// so the relation is opened as it was when the chunk was read (the chunk held a lock on it).
#include "session.hpp"

#include <cstring>
#include <fmt/format.h>

#include "image.hpp"
#include "relations.hpp"
#include "rules.hpp"

extern "C" {
#include "bemi/secret.h"
#include "bemi/snapshot.h"
#include "access/htup_details.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
}

namespace bemi {
namespace {

uint32 ReadUint32(const char *p) {
	uint32 value;
	std::memcpy(&value, p, sizeof(value));
	return value;
}

} // namespace

void Session::SnapshotMessage(ReorderBufferTXN *txn, XLogRecPtr lsn, Size size, const char *message) {
	Payload payload = Verify(txn, size, message);
	if (!payload.verified || payload.len < BEMI_SNAPSHOT_HEADER_LEN ||
	    std::memcmp(payload.data, BEMI_SNAPSHOT_MAGIC, BEMI_SNAPSHOT_MAGIC_LEN) != 0)
		return;
	const char *p = payload.data + BEMI_SNAPSHOT_MAGIC_LEN;
	Oid relid = ReadUint32(p);
	uint32 natts = ReadUint32(p + 4);
	uint32 nrows = ReadUint32(p + 8);
	const char *row = payload.data + BEMI_SNAPSHOT_HEADER_LEN;
	const char *end = payload.data + payload.len;

	Relation rel = PgCall([&]() { return RelationIdGetRelation(relid); });
	if (rel == nullptr)
		return;
	try {
		Rules *rules = nullptr;
		const RecordedRelation &plan = Plan(txn, rel, &rules);
		if (uint32(RelationGetDescr(rel)->natts) != natts)
			throw Error(ERRCODE_DATA_CORRUPTED,
			            fmt::format("bemi: a snapshot chunk of table {} does not match its columns", relid));
		bool skip = skip_txn_ || plan.own() || plan.ignored() || (!plan.rules_table() && WriterIgnored(*rules));
		if (!skip_txn_ && !plan.own() && skip)
			(plan.ignored() ? skipped_.table_rules : skipped_.writer_rules) += nrows;
		for (uint32 i = 0; i < nrows && !skip; i++) {
			if (end - row < 4 || Size(end - row - 4) < ReadUint32(row))
				throw Error(ERRCODE_DATA_CORRUPTED,
				            fmt::format("bemi: a snapshot chunk of table {} is cut short", relid));
			uint32 len = ReadUint32(row);
			const char *data = row + 4;
			row += 4 + len;

			BemiChange record = {};
			record.table_oid = plan.recorded_as();
			record.schema = plan.schema();
			record.table = plan.table();
			record.operation = "SNAPSHOT";
			record.before = empty_;
			MemoryContext old = MemoryContextSwitchTo(change_context_);
			HeapTupleData tuple;
			PgCall([&]() {
				// palloc'd: a tuple header must be aligned, and the message's bytes need not be.
				tuple.t_len = len;
				tuple.t_data = static_cast<HeapTupleHeader>(palloc(len));
				std::memcpy(tuple.t_data, data, len);
				ItemPointerSetInvalid(&tuple.t_self);
				tuple.t_tableOid = relid;
			});
			record.after = Image(rel, plan, &tuple, nullptr);
			PgCall([&]() {
				record.primary_key = PrimaryKeyText(plan, record.after);
				Emit(txn, lsn, &record);
				MemoryContextSwitchTo(old);
				MemoryContextReset(change_context_);
			});
		}
	} catch (...) {
		PgCall([&]() { RelationClose(rel); });
		throw;
	}
	PgCall([&]() { RelationClose(rel); });
}

} // namespace bemi
