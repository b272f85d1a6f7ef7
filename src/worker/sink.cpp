// sink.cpp: from decoded records to batches of bemi.changes (runs in the worker).
//
// While a transaction is replayed the plugin appends its records to the spool (memory, then a
// file). Between WAL records the worker drains the spool in batches (batch.cpp writes them: one
// multi-row INSERT per batch and the new progress, in one transaction). Progress counts records
// within a transaction, so a crash in the middle of a huge transaction resumes exactly where the
// last batch ended.
//
// Crossings: the BemiSink* functions at the bottom are what the plugin calls, from decoding inside
// the worker's PgCall around LogicalDecodingProcessRecord (the decoding core calls them inside its
// own PgCall); each enters C++ through bemi::Enter, so an exception (a spool that cannot write)
// becomes an ERROR there and never unwinds PostgreSQL's decoding frames.
#include "sink.hpp"

#include "remote.hpp"
#include "transaction.hpp"
#include "writers.hpp"

#include <fmt/format.h>

#include <cstring>

extern "C" {
#include "bemi/decoding.h"
#include "bemi/settings.h"
#include "commands/dbcommands.h"
#if PG_VERSION_NUM >= 180000
#include "common/file_utils.h" /* PG_TEMP_FILES_DIR moved here from storage/fd.h in 18 */
#endif
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/resowner.h"
#include "utils/pg_lsn.h"
}

bool bemi_sink_active = false;

namespace bemi {

namespace {

constexpr size_t kSpoolMemory = 16 * 1024 * 1024;
constexpr size_t kBatchBytes = 64 * 1024 * 1024; // every byte a batch's column arrays hold, far below 1 GB

Sink *active_sink = nullptr;

enum EntryKind : char { kBegin = 'B', kContext = 'X', kChange = 'C', kCommit = 'E' };

struct EntryHeader {
	char kind;
	uint32 size; // payload bytes that follow
};

// A commit entry: the transaction's end and what the rules skipped in it.
struct CommitEntry {
	XLogRecPtr end_lsn;
	BemiSkipped skipped;
};

struct BeginEntry {
	TransactionId xid;
	XLogRecPtr end_lsn;
	TimestampTz commit_time;
};

// A change entry: this, then schema, table, primary key, before, after (lengths below).
struct ChangeEntry {
	XLogRecPtr lsn;
	Oid table_oid;
	char operation[12];
	int32 schema_len;
	int32 table_len;
	int32 pk_len; // -1: no primary key
	int32 before_len;
	int32 after_len;
};

} // namespace

namespace {

// What every BatchWriter of a database needs: its name and the empty context. C++ copies.
struct WriterBasics {
	std::string database;
	std::vector<char> empty_context;
};

WriterBasics LoadWriterBasics(Oid dboid) {
	struct Found {
		const char *database;
		Jsonb *empty;
	};
	Found found = PgCall([&]() {
		Found f{nullptr, BemiEmptyImage()};
		MemoryContext caller = CurrentMemoryContext; // the transaction's own memory goes at commit
		InTransaction([&]() { f.database = MemoryContextStrdup(caller, get_database_name(dboid)); });
		return f;
	});
	const char *empty = reinterpret_cast<const char *>(found.empty);
	WriterBasics basics{found.database, std::vector<char>(empty, empty + VARSIZE(found.empty))};
	PgCall([&]() {
		pfree(const_cast<char *>(found.database));
		pfree(found.empty);
	});
	return basics;
}

} // namespace

std::unique_ptr<Sink> StartSink(Oid dboid, const Progress &done) {
	char path[MAXPGPATH];
	PgCall([&]() {
		// In base/pgsql_tmp, named like PostgreSQL's own temporary files: the server removes it at
		// start and after a crash, and the database's next worker replaces a leftover.
		MakePGDirectory("base/" PG_TEMP_FILES_DIR);
		snprintf(path, sizeof(path), "base/%s/%sbemi_spool_%u", PG_TEMP_FILES_DIR, PG_TEMP_FILE_PREFIX,
		         dboid);
	});
	WriterBasics basics = LoadWriterBasics(dboid);
	return std::make_unique<Sink>(path, std::move(basics.database), std::move(basics.empty_context), done);
}

std::unique_ptr<BatchWriter> StartBatchWriter(Oid dboid) {
	WriterBasics basics = LoadWriterBasics(dboid);
	return std::make_unique<BatchWriter>(std::move(basics.database), std::move(basics.empty_context));
}

Sink::Sink(std::string spool_path, std::string database, std::vector<char> empty_context,
           const Progress &done)
    : spool_(std::move(spool_path), kSpoolMemory), done_(done),
      writer_(std::move(database), std::move(empty_context)) {
	active_sink = this;
	bemi_sink_active = true;
}

Sink::~Sink() {
	active_sink = nullptr;
	bemi_sink_active = false;
}

Sink &Sink::Active() {
	if (!active_sink)
		throw Error(ERRCODE_INTERNAL_ERROR, "bemi: the sink is fed outside the worker");
	return *active_sink;
}

void Sink::Append(char kind, const void *fixed, uint32 fixed_size, const void *const *parts,
                  const int32 *sizes, int nparts) {
	EntryHeader header = {kind, fixed_size};
	for (int i = 0; i < nparts; i++)
		header.size += Max(sizes[i], 0);
	spool_.Append(&header, sizeof(header));
	spool_.Append(fixed, fixed_size);
	for (int i = 0; i < nparts; i++)
		if (sizes[i] > 0)
			spool_.Append(parts[i], sizes[i]);
}

// Called by the plugin at BEGIN: is this whole transaction already written?
bool Sink::SkipTransaction(XLogRecPtr end_lsn) {
	skip_records_ = 0;
	txn_ordinal_ = 0;
	if (end_lsn < done_.txn_end_lsn)
		return true;
	if (end_lsn == done_.txn_end_lsn) {
		if (done_.txn_complete)
			return true;
		skip_records_ = done_.txn_records;
	}
	return false;
}

void Sink::Begin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time) {
	BeginEntry entry = {xid, end_lsn, commit_time};
	Append(kBegin, &entry, sizeof(entry), nullptr, nullptr, 0);
}

void Sink::Context(const Jsonb *context) {
	const void *parts[1] = {context};
	int32 sizes[1] = {static_cast<int32>(VARSIZE(context))};
	Append(kContext, nullptr, 0, parts, sizes, 1);
}

void Sink::Change(XLogRecPtr lsn, const BemiChange &change) {
	// Ordinals count every record, skipped or not, so they match across runs.
	if (++txn_ordinal_ <= skip_records_)
		return;
	ChangeEntry entry;
	std::memset(&entry, 0, sizeof(entry));
	entry.lsn = lsn;
	entry.table_oid = change.table_oid;
	strlcpy(entry.operation, change.operation, sizeof(entry.operation));
	entry.schema_len = static_cast<int32>(std::strlen(change.schema));
	entry.table_len = static_cast<int32>(std::strlen(change.table));
	entry.pk_len = change.primary_key ? static_cast<int32>(VARSIZE_ANY_EXHDR(change.primary_key)) : -1;
	entry.before_len = static_cast<int32>(VARSIZE(change.before));
	entry.after_len = static_cast<int32>(VARSIZE(change.after));
	const void *parts[5] = {change.schema, change.table,
	                        change.primary_key ? VARDATA_ANY(change.primary_key) : nullptr, change.before,
	                        change.after};
	int32 sizes[5] = {entry.schema_len, entry.table_len, entry.pk_len, entry.before_len, entry.after_len};
	Append(kChange, &entry, sizeof(entry), parts, sizes, 5);
	pending_changes_++;
}

void Sink::Commit(XLogRecPtr end_lsn, const BemiSkipped &skipped) {
	CommitEntry entry = {end_lsn, skipped};
	Append(kCommit, &entry, sizeof(entry), nullptr, nullptr, 0);
}

/* ---- draining ---- */

void Sink::ReadExact(void *data, size_t size) {
	if (!spool_.Read(data, size))
		throw Error(ERRCODE_INTERNAL_ERROR, "bemi: spool ended inside a record");
}

// A whole varlena of `size` bytes (a jsonb), into the batch's arena.
size_t Sink::ReadVarlena(size_t size) {
	size_t offset = batch_.Reserve(size);
	ReadExact(batch_.At(offset), size);
	return offset;
}

// `len` bytes of a text's data, into the batch's arena as a text.
size_t Sink::ReadText(int32 len) {
	size_t offset = batch_.ReserveText(len);
	ReadExact(batch_.At(offset) + VARHDRSZ, len);
	return offset;
}

// The batch, then the skip counts of the transactions it completes: counted once, like the
// changes (a transaction decoded again after a failure is counted with the batch that ends it).
void Sink::WriteBatch(BemiDatabase *db, const Progress &reached, TimestampTz last_commit) {
	BemiSkipped skipped = skipped_;
	skipped_ = {};
	// The content digests of the chain; a destination's rows are not chained (remote.cpp).
	if (!writer_.Remote()) {
		PgCall([&]() {
			if (hasher_ == nullptr) {
				// For the process's life, outside any transaction: under a resource owner of its
				// own, never released.
				ResourceOwner saved = CurrentResourceOwner;
				CurrentResourceOwner = ResourceOwnerCreate(nullptr, "bemi chain digests");
				hasher_ = ChainHasher();
				CurrentResourceOwner = saved;
			}
			batch_.Digest(hasher_, writer_.Database(), writer_.EmptyContext());
		});
	}
	if (writers_ != nullptr) {
		XLogRecPtr commit_end;
		bool in_flight = writers_->Committed(&commit_end) < writers_->Sent();
		if (db->failures == 0 && (in_flight || batch_.Count() >= bemi_batch_size)) {
			// A backlog: a writer writes the batch (and counts its skips once committed) while
			// decoding goes on.
			writers_->Send(batch_, reached, last_commit, skipped);
			done_ = reached;
			return;
		}
		// A small batch with the writers idle (a steady load, where a hand-off would only add
		// CPU and latency), or careful mode after a failure: the worker writes it itself, in its
		// turn, once everything handed to the writers is committed.
		writers_->Drain();
		Turns turns = writers_->OwnTurn();
		turns.skipped = skipped; // counted in the batch's commit turn
		writer_.Write(db, batch_, reached, last_commit, &turns);
		done_ = reached;
		return;
	}
	writer_.Write(db, batch_, reached, last_commit);
	done_ = reached;
	PgCall([&]() { AddSkipped(db, skipped); });
}

void Sink::Drain(BemiDatabase *db) {
	EntryHeader header;
	BeginEntry txn = {};
	Progress reached = done_;
	TimestampTz last_commit = 0;
	size_t context = Batch::kNone; // the current context, in the batch's arena
	int capacity = bemi_batch_size;

	batch_.Clear(Batch::kNone);
	skipped_ = {};
	while (spool_.Read(&header, sizeof(header))) {
		switch (header.kind) {
		case kBegin:
			ReadExact(&txn, sizeof(txn));
			context = Batch::kNone;
			reached.txn_end_lsn = txn.end_lsn;
			reached.txn_records = txn.end_lsn == done_.txn_end_lsn ? done_.txn_records : 0;
			reached.txn_complete = false;
			break;
		case kContext:
			context = ReadVarlena(header.size);
			break;
		case kCommit: {
			CommitEntry commit;
			ReadExact(&commit, sizeof(commit));
			skipped_.table_rules += commit.skipped.table_rules;
			skipped_.column_rules += commit.skipped.column_rules;
			skipped_.writer_rules += commit.skipped.writer_rules;
			reached.txn_complete = true;
			last_commit = txn.commit_time;
			break;
		}
		case kChange: {
			ChangeEntry entry;
			Batch::Row row;
			if (batch_.Count() >= capacity || batch_.Bytes() >= kBatchBytes) {
				// Full: written when the next change comes, so that it carries the progress of the
				// commits that followed its last change (no batch of progress alone in between).
				WriteBatch(db, reached, last_commit);
				// The current context outlives the batch: it stays in the arena.
				context = batch_.Clear(context);
				capacity = bemi_batch_size;
			}
			ReadExact(&entry, sizeof(entry));
			row.schema = ReadText(entry.schema_len);
			row.table = ReadText(entry.table_len);
			row.pk = entry.pk_len < 0 ? Batch::kNone : ReadText(entry.pk_len);
			row.before = ReadVarlena(entry.before_len);
			row.after = ReadVarlena(entry.after_len);
			size_t operation_len = strnlen(entry.operation, sizeof(entry.operation));
			row.operation = batch_.ReserveText(operation_len);
			std::memcpy(batch_.At(row.operation) + VARHDRSZ, entry.operation, operation_len);
			row.context = context;
			row.committed = txn.commit_time;
			row.xid = txn.xid;
			row.position = entry.lsn;
			row.table_oid = entry.table_oid;
			size_t context_size =
			    context == Batch::kNone ? writer_.EmptyContextSize() : VARSIZE(batch_.At(context));
			// Each array element is a copy: the context counts once per change.
			batch_.Add(row, static_cast<size_t>(entry.before_len) + entry.after_len + Max(entry.pk_len, 0) +
			                    context_size + entry.schema_len + entry.table_len);
			reached.txn_records++;
			break;
		}
		default:
			throw Error(ERRCODE_INTERNAL_ERROR, fmt::format("bemi: corrupt spool entry '{}'", header.kind));
		}
	}
	if (batch_.Count() > 0 || reached.txn_end_lsn != done_.txn_end_lsn ||
	    reached.txn_complete != done_.txn_complete)
		WriteBatch(db, reached, last_commit);
	spool_.Reset();
	pending_changes_ = 0;
	batch_.Release();
}

bool Later(const Progress &a, const Progress &b) {
	if (a.txn_end_lsn != b.txn_end_lsn)
		return a.txn_end_lsn > b.txn_end_lsn;
	if (a.txn_complete != b.txn_complete)
		return a.txn_complete;
	return !a.txn_complete && a.txn_records > b.txn_records;
}

void Sink::UseDestination(BemiDatabase *db, const std::string &conninfo) {
	std::optional<Progress> there =
	    writer_.UseRemote(db, std::make_unique<RemoteDestination>(conninfo, SystemIdentifier(), writer_.Database(), db,
	                                                   PgCall([]() { return bemi_destination_connections; })));
	// What this database's own progress says was written (here, or there by an earlier run
	// before it updated bemi.progress) and what the destination holds: the later of the two.
	if (there && Later(*there, done_))
		done_ = *there;
}

std::string LoadDestination() {
	const char *found = PgCall([&]() {
		const char *conninfo = nullptr;
		MemoryContext caller = CurrentMemoryContext;
		InTransactionWithSpi([&]() {
			bool isnull;
			// Before ALTER EXTENSION bemi UPDATE to 0.5.0 there is no bemi.destination: the trail is here.
			if (SPI_execute("SELECT pg_catalog.to_regclass('bemi.destination') IS NOT NULL", true, 0) !=
			        SPI_OK_SELECT ||
			    !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
				return;
			if (SPI_execute("SELECT d.conninfo FROM bemi.destination d", true, 0) == SPI_OK_SELECT &&
			    SPI_processed == 1) {
				Datum value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
				if (!isnull)
					conninfo = MemoryContextStrdup(caller, TextDatumGetCString(value));
			}
		});
		return conninfo;
	});
	std::string conninfo = found != nullptr ? found : "";
	if (found != nullptr)
		PgCall([&]() { pfree(const_cast<char *>(found)); });
	return conninfo;
}

Progress LoadProgress() {
	Progress progress;
	PgCall([&]() {
		InTransactionWithSpi([&]() {
			bool isnull;
			if (SPI_execute("SELECT txn_end_lsn, txn_records, txn_complete FROM bemi.progress", true, 0) !=
			        SPI_OK_SELECT ||
			    SPI_processed != 1)
				elog(ERROR, "bemi: bemi.progress must hold exactly one row");
			HeapTuple row = SPI_tuptable->vals[0];
			TupleDesc desc = SPI_tuptable->tupdesc;
			progress.txn_end_lsn = DatumGetLSN(SPI_getbinval(row, desc, 1, &isnull));
			progress.txn_records = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));
			progress.txn_complete = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
		});
	});
	return progress;
}

} // namespace bemi

// ---- The plugin's calls (sink.h): each enters the sink through the guard. ----

extern "C" bool BemiSinkSkipTransaction(XLogRecPtr end_lsn) {
	return bemi::Enter([&]() { return bemi::Sink::Active().SkipTransaction(end_lsn); });
}

extern "C" void BemiSinkBegin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time) {
	bemi::Enter([&]() { bemi::Sink::Active().Begin(xid, end_lsn, commit_time); });
}

extern "C" void BemiSinkContext(Jsonb *context) {
	bemi::Enter([&]() { bemi::Sink::Active().Context(context); });
}

extern "C" void BemiSinkChange(XLogRecPtr lsn, const BemiChange *change) {
	bemi::Enter([&]() { bemi::Sink::Active().Change(lsn, *change); });
}

extern "C" void BemiSinkCommit(XLogRecPtr end_lsn, const BemiSkipped *skipped) {
	bemi::Enter([&]() { bemi::Sink::Active().Commit(end_lsn, *skipped); });
}
