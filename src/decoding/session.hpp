// session.hpp: the state of one decoding session of the bemi plugin (the worker's, or one
// pg_logical_slot_get_changes call): the context changes carry now, and where records go.
#pragma once

#include "bemi/guard.hpp"

extern "C" {
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "utils/jsonb.h"
}

#include "bemi/sink.h" // BemiChange, BemiSkipped

namespace bemi {

class RecordedRelation;
class Rules;

// Lives in the decoding context's memory (ctx->context) and holds only plain values and palloc'd
// memory of that context, so it goes with the context however decoding ends (even by ERROR).
class Session {
  public:
	// Parses the plugin's options; the session becomes ctx->output_plugin_private.
	static void Start(LogicalDecodingContext *ctx, OutputPluginOptions *opt);
	static Session &Of(LogicalDecodingContext *ctx) {
		return *static_cast<Session *>(ctx->output_plugin_private);
	}

	void Begin(ReorderBufferTXN *txn);
	void Commit(ReorderBufferTXN *txn);
	void Message(ReorderBufferTXN *txn, XLogRecPtr lsn, bool transactional, const char *prefix, Size size,
	             const char *message);
	void Change(ReorderBufferTXN *txn, Relation rel, ReorderBufferChange *change);
	void Truncate(ReorderBufferTXN *txn, int nrelations, Relation relations[], ReorderBufferChange *change);
	// Inside the worker, its own writes carry its origin and are skipped.
	bool SkipsOrigin(RepOriginId origin) const;

  private:
	explicit Session(LogicalDecodingContext *ctx) : ctx_(ctx) {}

	// The application context of a message, judged under bemi_set_context's rules.
	struct Judged {
		Jsonb *application; // the context to carry, or a note saying why there is none
		Jsonb *parsed;      // the whole object, or nullptr
	};
	// A message's payload, and whether this server's backends signed it (src/context/secret.c).
	struct Payload {
		bool verified;
		const char *data;
		Size len;
	};
	static Payload Verify(ReorderBufferTXN *txn, Size size, const char *message);
	void MessageInTxn(ReorderBufferTXN *txn, bool ours, Size size, const char *message);
	// A chunk of bemi_snapshot's worker: its rows as SNAPSHOT changes (snapshot_records.cpp).
	void SnapshotMessage(ReorderBufferTXN *txn, XLogRecPtr lsn, Size size, const char *message);
	// A schema change of a recorded table (session_ddl.cpp).
	void Ddl(ReorderBufferTXN *txn, XLogRecPtr lsn, Size size, const char *message);
	Judged JudgeApplicationContext(const char *payload, Size size, bool limit_size);
	Jsonb *ParseJson(const char *payload, Size size);
	Jsonb *ParseObject(const char *payload, Size size);
	Jsonb *Note(const char *key, const char *reason);
	void Replace(Jsonb *context, Jsonb *application, Jsonb *identity, Jsonb *const *candidates, int n);
	void ClearContext();
	Jsonb *Image(Relation rel, const RecordedRelation &plan, HeapTuple tuple, HeapTuple old_tuple);
	void Emit(ReorderBufferTXN *txn, XLogRecPtr lsn, const BemiChange *change);
	const RecordedRelation &Plan(ReorderBufferTXN *txn, Relation rel, Rules **rules);
	bool WriterIgnored(const Rules &rules);

	LogicalDecodingContext *ctx_;
	MemoryContext change_context_ = nullptr; // reset after every change
	MemoryContext txn_context_ = nullptr;    // reset at every transaction start and end
	bool to_sink_ = false;                   // running inside the worker
	char *database_ = nullptr;
	Jsonb *empty_ = nullptr;
	Jsonb *context_ = nullptr;     // what changes carry now: application || identity, or nullptr
	Jsonb *application_ = nullptr; // latest application context of the transaction, or nullptr
	Jsonb *identity_ = nullptr;    // {"_bemi": ...} of the latest verified message, or nullptr
	bool skip_txn_ = false;        // already written by an earlier run of the worker
	BemiSkipped skipped_ = {};     // this transaction's changes the rules kept out (the sink counts them)
	bool context_from_trigger_ = false; // the application context came from an unsigned message
	// The last judgment of the writer by ignore_writer rules: of which identity, under which rules.
	const Jsonb *writer_identity_ = nullptr;
	uint64 writer_generation_ = 0;
	bool writer_ignored_ = false;
};

} // namespace bemi
