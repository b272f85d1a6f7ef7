// sink.hpp: the worker's sink, from the plugin's records to rows of bemi.changes (sink.cpp,
// batch.cpp). Worker code only; the plugin reaches the sink through include/bemi/sink.h.
#pragma once

#include "spool.hpp"

#include "bemi/chain.hpp"

extern "C" {
#include "access/xlogdefs.h"
#include "bemi/registry.h"
#include "bemi/sink.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
}

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace bemi {

struct Turns;
class Writers;
class RemoteDestination;

// Where the worker stands in the stream; see bemi.progress.
struct Progress {
	XLogRecPtr txn_end_lsn = InvalidXLogRecPtr;
	int64 txn_records = 0;
	bool txn_complete = true;
};

// What bemi.progress holds (its own transaction).
Progress LoadProgress();

// A batch of changes ready to insert. Their variable parts (texts, jsonbs: whole varlenas) live in
// one arena the batch owns, so filling a batch calls no PostgreSQL function and allocates nothing
// per change once the arena has grown; the arena's bytes are bounded by the batch's limit.
class Batch {
  public:
	static constexpr size_t kNone = SIZE_MAX; // no primary key; the empty context

	struct Row {
		size_t pk, before, after, context, schema, table, operation; // arena offsets
		TimestampTz committed;
		TransactionId xid;
		XLogRecPtr position;
		Oid table_oid;
		uint8 digest[kChainHashLen]; // the content's digest for the chain (Digest())
	};

	// Room for a varlena of `size` bytes (header included), MAXALIGNed; its offset.
	size_t Reserve(size_t size);
	// Room for a text of `len` bytes, its header set; its offset (the bytes follow VARHDRSZ).
	size_t ReserveText(size_t len);
	char *At(size_t offset) { return arena_.data() + offset; }
	const char *At(size_t offset) const { return arena_.data() + offset; }

	// `bytes`: what the row's values add to the statement's arrays.
	void Add(const Row &row, size_t bytes) {
		rows_.push_back(row);
		bytes_ += bytes;
	}
	int Count() const { return static_cast<int>(rows_.size()); }
	size_t Bytes() const { return bytes_; }
	const std::vector<Row> &Rows() const { return rows_; }
	size_t ArenaBytes() const { return arena_.size(); }
	// The rows and arena of a batch another process filled (writers.cpp).
	void Assign(const Row *rows, size_t count, const char *arena, size_t arena_bytes) {
		rows_.assign(rows, rows + count);
		arena_.assign(arena, arena + arena_bytes);
		bytes_ = 0;
	}
	// Forgets the rows, keeping only the varlena at `keep` (kNone: nothing); its new offset.
	size_t Clear(size_t keep);
	// Clear(kNone), and memory beyond a small arena goes back (the worker may idle for long).
	void Release();
	// Every row's content digest (include/bemi/chain.hpp), as the rows will be stored: `context`
	// stands for the rows without one, `database` for every row's. Done by the decoder before the
	// batch goes to a writer, so that the writers, the bottleneck of a drain, only link.
	// C-style, inside PgCall only.
	void Digest(pg_cryptohash_ctx *ctx, const std::string &database, const std::vector<char> &empty_context);

  private:
	static constexpr size_t kKeptBytes = 1024 * 1024;
	std::vector<char> arena_;
	std::vector<Row> rows_;
	size_t bytes_ = 0;
};

// Writes batches: one transaction with the rows (one table_multi_insert per partition, else one
// INSERT; change by change after a failure) and the progress they reach. Owns the prepared
// statements.
class BatchWriter {
  public:
	BatchWriter(std::string database, std::vector<char> empty_context);
	~BatchWriter();
	// The destination seam: with a RemoteDestination the batches go there (remote.cpp) and only
	// bemi.progress is written here, after the destination committed; without one, into
	// bemi.changes here. Its progress for this source, if it holds any.
	std::optional<Progress> UseRemote(BemiDatabase *db, std::unique_ptr<RemoteDestination> remote);
	bool Remote() const { return remote_ != nullptr; }
	// With a destination, Write sends a batch and returns before the destination's COMMIT
	// answers (up to bemi.destination_connections batches are in flight): Settle() waits for
	// them all and writes their progress here. Batches sent and settled so
	// far (the worker applies and confirms what is settled).
	void Settle(BemiDatabase *db);
	uint64 SentCount() const { return sent_count_; }
	// With a destination: pushes the batches in flight towards it without waiting (see
	// RemoteDestination::Pump); called while the worker decodes. Never throws.
	void Pump() noexcept;
	uint64 SettledCount() const { return settled_count_; }
	const std::string &Database() const { return database_; }
	// turns: the batch's place in the writers' order (writers.hpp); nullptr when the worker
	// writes alone (bemi.writers = 0).
	void Write(BemiDatabase *db, const Batch &batch, const Progress &reached, TimestampTz last_commit,
	           const Turns *turns = nullptr);
	size_t EmptyContextSize() const { return empty_context_.size(); }
	void ForgetChainHead() { head_.valid = false; }
	const std::vector<char> &EmptyContext() const { return empty_context_; }

	// The batch's columns as PostgreSQL reads them; plain pointers into the writer's buffers.
	// The chain's (id, created_at, hash, previous_id) are filled in the ids turn, from the content
	// digests computed before it (include/bemi/chain.hpp).
	struct Columns {
		int count;
		Datum *pk, *before, *after, *context, *schema, *table, *operation, *committed, *xid, *position,
		    *table_oid;
		bool *pk_null;
		Datum *id, *created, *hash, *previous_id;
		bool *previous_null;
		uint8 *digest; // kChainHashLen bytes per row
	};

	// The chain while a batch is written (C-style, inside PgCall): a hash context of the batch's
	// transaction, and the head the batch links to (the writers' shared one, or head_).
	struct Chain {
		pg_cryptohash_ctx *ctx;
		ChainHead *head;
		Oid id_sequence;
	};
	// What the batch's rows link to, for multi_insert.cpp: ids and created_at drawn, the links
	// made from the head, then the head advanced to the last row. C-style, inside PgCall only.
	void LinkRows(const Columns &c, int first, int count);
	const Chain *ChainOfBatch() const { return chained_ ? &chain_ : nullptr; }

  private:
	Columns Fill(const Batch &batch);
	void WriteColumns(BemiDatabase *db, const Columns &columns, const Progress &reached, TimestampTz last_commit,
	                  const Turns *turns);
	// C-style, inside PgCall only.
	enum class Schema { kNoTableOid, kNoChain, kChain };
	Schema ChangesSchema();
	void PreparePlans(Schema schema);
	void DigestRow(const Columns &c, int i);
	void LoadChainHead();
	void LinkRange(const Columns &c, int first, int count, const ChainHead &from);
	void AdvanceHead(const Columns &c, int i);
	void DrawIdsAndTimes(const Columns &c, int first, int count);
	void InsertRows(const Columns &c, int first, int count);
	void InsertBatch(const Columns &c, const Turns *turns);
	ErrorData *TryInsertRow(const Columns &c, int i, MemoryContext row_context);
	int InsertCarefully(const Columns &c, char *note, size_t note_len);

	std::string database_;
	std::vector<char> empty_context_; // the jsonb {} of changes without context
	std::vector<Datum> datums_;       // the columns' values, column after column
	std::vector<char> pk_null_;       // bool per row (a vector<bool> has no data())
	std::vector<char> previous_null_; // bool per row
	std::vector<uint8> digests_;      // kChainHashLen per row
	std::vector<char> hashes_;        // a bytea of kChainHashLen per row, kHashBytes apart
	SPIPlanPtr insert_plan_ = nullptr;
	Schema insert_schema_ = Schema::kNoTableOid; // what insert_plan_ writes
	SPIPlanPtr progress_plan_ = nullptr;
	SPIPlanPtr head_plan_ = nullptr;
	bool chained_ = false; // this batch is chained (bemi.changes has hash and previous_id)
	Chain chain_ = {};
	ChainHead head_ = {}; // the head when the worker writes alone (no turns)
	bool multi_insert_ = true; // the last whole batch went by table_multi_insert (multi_insert.cpp)
	std::unique_ptr<RemoteDestination> remote_; // none: the trail is here
	struct Sent {
		Progress reached;
		TimestampTz last_commit;
		int count;
	};
	std::deque<Sent> sent_; // the batches in flight to the destination, oldest first
	// Waits for the oldest batch in flight (all: for every one) and writes its progress here.
	void SettleOldest(BemiDatabase *db, bool all);
	uint64 sent_count_ = 0, settled_count_ = 0;
};

// The sink of one worker run: the plugin's records go to the spool while a transaction is
// replayed; between WAL records the worker drains the spool into batches. While a Sink lives,
// bemi_sink_active is true and the BemiSink* functions of sink.h feed it.
class Sink {
  public:
	// See StartSink().
	Sink(std::string spool_path, std::string database, std::vector<char> empty_context, const Progress &done);
	Sink(const Sink &) = delete;
	Sink &operator=(const Sink &) = delete;
	~Sink();
	static Sink &Active();

	// The plugin's side.
	bool SkipTransaction(XLogRecPtr end_lsn);
	void Begin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time);
	void Context(const Jsonb *context);
	void Change(XLogRecPtr lsn, const BemiChange &change);
	void Commit(XLogRecPtr end_lsn, const BemiSkipped &skipped);

	// The worker's side.
	bool Pending() const { return spool_.Bytes() > 0; }
	int64 PendingChanges() const { return pending_changes_; }
	// Writes everything the spool holds, in batches of bemi.batch_size changes: hands them to
	// the writers if UseWriters() gave some.
	void Drain(BemiDatabase *db);
	// Writers started (or gone: nullptr). Either way the chain's head moves elsewhere meanwhile:
	// the worker's own batches read it again.
	void UseWriters(Writers *writers) {
		writers_ = writers;
		writer_.ForgetChainHead();
	}
	// Writes to another database's trail (bemi.destination): what that destination already holds
	// of this source is skipped. Throws if it cannot be reached.
	void UseDestination(BemiDatabase *db, const std::string &conninfo);
	const Progress &Done() const { return done_; }
	// With a destination: see BatchWriter::Settle.
	bool Remote() const { return writer_.Remote(); }
	void Settle(BemiDatabase *db) { writer_.Settle(db); }
	void Pump() noexcept { writer_.Pump(); }
	uint64 RemoteSent() const { return writer_.SentCount(); }
	uint64 RemoteSettled() const { return writer_.SettledCount(); }

  private:
	void Append(char kind, const void *fixed, uint32 fixed_size, const void *const *parts, const int32 *sizes,
	            int nparts);
	void ReadExact(void *data, size_t size);
	size_t ReadVarlena(size_t size);
	size_t ReadText(int32 len);
	void WriteBatch(BemiDatabase *db, const Progress &reached, TimestampTz last_commit);

	Spool spool_;
	Progress done_;          // what bemi.changes already holds
	int64 skip_records_ = 0; // records of the current transaction written by an earlier run
	int64 txn_ordinal_ = 0;  // records of the current transaction seen so far
	int64 pending_changes_ = 0;
	BemiSkipped skipped_ = {}; // of the transactions drained into the batch being filled
	pg_cryptohash_ctx *hasher_ = nullptr; // the decoder's, for Batch::Digest (a resource owner of its own)
	Batch batch_;
	BatchWriter writer_;
	Writers *writers_ = nullptr;
};

// Is a later than b in the stream?
bool Later(const Progress &a, const Progress &b);
// The conninfo of bemi.destination; empty when the trail is here (or the SQL predates it).
std::string LoadDestination();

// The sink of database dboid's worker, which has written up to `done`.
std::unique_ptr<Sink> StartSink(Oid dboid, const Progress &done);
// The batch writer of a writer process of database dboid (writers.cpp).
std::unique_ptr<BatchWriter> StartBatchWriter(Oid dboid);

} // namespace bemi
