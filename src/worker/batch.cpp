// batch.cpp: writing one batch of changes into bemi.changes with the progress it reaches (runs in
// the worker, called by the sink's drain).
//
// One PgCall per batch: the columns are filled in C++ from the batch's arena (no PostgreSQL call,
// nothing per row but pointer arithmetic), then one plain C-style sequence inside PgCall starts
// the transaction, inserts (by table_multi_insert, as COPY does: multi_insert.cpp; through the
// prepared INSERT when bemi.changes has triggers or the like), updates bemi.progress and commits. After a
// failed batch the next one is written change by change in subtransactions ("careful mode"), so that one
// change that cannot be written is recorded with its reason instead of stopping everybody's capture. The
// worker runs as superuser: its statements name pg_catalog's functions and bemi's tables
// explicitly.
#include "sink.hpp"

#include "multi_insert.hpp"
#include "remote.hpp"
#include "transaction.hpp"
#include "writers.hpp"

#include <cstring>

extern "C" {
#include "access/xact.h"
#include "bemi/bemi.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/resowner.h"
}

namespace bemi {

namespace {

constexpr int kInsertArgs = 12;
constexpr int kColumns = 11; // the per-row columns (the database is one value)

// The arena holds whole varlenas, each MAXALIGNed like palloc'd ones.
size_t Aligned(size_t size) {
	return MAXALIGN(size);
}

// C-style, inside PgCall only.
Datum MakeArray(Datum *values, bool *nulls, int count, Oid type) {
	int16 typlen;
	bool typbyval;
	char typalign;
	int dims[1] = {count};
	int lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type, typlen, typbyval, typalign));
}

// Does bemi.changes have table_oid? Not while the database's SQL is still 0.1.0: between
// `make install` of a newer library and ALTER EXTENSION bemi UPDATE (checked at every batch, so
// the update takes effect at the next one, and the other way round for a downgrade).
// C-style, inside PgCall only.
bool ChangesHaveTableOid() {
	Oid bemi_schema = get_namespace_oid("bemi", true);
	Oid changes = OidIsValid(bemi_schema) ? get_relname_relid("changes", bemi_schema) : InvalidOid;

	return OidIsValid(changes) && get_attnum(changes, "table_oid") != InvalidAttrNumber;
}

// {"_bemi_write_error": "<message>"}: what is recorded instead of images that could not be.
// C-style, inside PgCall only.
Datum WriteErrorImage(const char *message) {
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, BEMI_RESERVED_KEY "_write_error");
	appendStringInfoString(&buf, ": ");
	escape_json(&buf, message);
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

// Errors that say nothing about the change at hand (no disk, I/O, the server going away, a lock or
// serialization conflict, a corrupt index): replacing the change for them would lose it, so the
// batch fails and is retried. Running out of memory and internal errors ("invalid memory alloc
// request size") can come from one huge change: for those the replacement is tried, and if it
// fails too, the failure is systemic after all.
bool SystemicError(int sqlerrcode) {
	switch (ERRCODE_TO_CATEGORY(sqlerrcode)) {
	case ERRCODE_CONNECTION_EXCEPTION:
	case ERRCODE_TRANSACTION_ROLLBACK:
	case ERRCODE_OPERATOR_INTERVENTION:
	case ERRCODE_SYSTEM_ERROR:
		return true;
	case ERRCODE_INSUFFICIENT_RESOURCES:
		return sqlerrcode != ERRCODE_OUT_OF_MEMORY;
	case ERRCODE_INTERNAL_ERROR:
		return sqlerrcode != ERRCODE_INTERNAL_ERROR;
	default:
		// bemi.changes' one unique key is its generated id: a clash is never the change's fault
		// (a restore that loaded ids the sequence had not reached yet), and retrying draws new ids.
		return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE || sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
	}
}

} // namespace

size_t Batch::Reserve(size_t size) {
	size_t offset = Aligned(arena_.size());
	arena_.resize(offset + Aligned(size));
	return offset;
}

size_t Batch::ReserveText(size_t len) {
	size_t offset = Reserve(VARHDRSZ + len);
	SET_VARSIZE(At(offset), VARHDRSZ + len);
	return offset;
}

size_t Batch::Clear(size_t keep) {
	rows_.clear();
	bytes_ = 0;
	if (keep == kNone) {
		arena_.clear();
		return kNone;
	}
	size_t size = VARSIZE(At(keep));
	std::memmove(arena_.data(), At(keep), size);
	arena_.resize(Aligned(size));
	return 0;
}

void Batch::Release() {
	Clear(kNone);
	if (arena_.capacity() > kKeptBytes)
		std::vector<char>().swap(arena_);
	if (rows_.capacity() * sizeof(Row) > kKeptBytes)
		std::vector<Row>().swap(rows_);
}

BatchWriter::BatchWriter(std::string database, std::vector<char> empty_context)
    : database_(std::move(database)), empty_context_(std::move(empty_context)) {}

BatchWriter::~BatchWriter() = default;

namespace {

// What bemi_status() says of the destination. C-style.
void SetReachable(BemiDatabase *db, bool reachable) {
	SpinLockAcquire(&db->mutex);
	db->destination_reachable = reachable ? 1 : 2;
	SpinLockRelease(&db->mutex);
}

} // namespace

std::optional<Progress> BatchWriter::UseRemote(BemiDatabase *db, std::unique_ptr<RemoteDestination> remote) {
	std::optional<Progress> there;
	try {
		there = remote->LoadProgress();
	} catch (...) {
		PgCall([&]() { SetReachable(db, false); });
		throw;
	}
	PgCall([&]() { SetReachable(db, true); });
	remote_ = std::move(remote);
	return there;
}

BatchWriter::Columns BatchWriter::Fill(const Batch &batch) {
	size_t count = batch.Rows().size();
	datums_.resize(kColumns * count);
	pk_null_.resize(count);
	Columns c;
	Datum *column = datums_.data();
	for (Datum **to : {&c.pk, &c.before, &c.after, &c.context, &c.schema, &c.table, &c.operation,
	                   &c.committed, &c.xid, &c.position, &c.table_oid}) {
		*to = column;
		column += count;
	}
	c.count = static_cast<int>(count);
	c.pk_null = reinterpret_cast<bool *>(pk_null_.data());
	static_assert(sizeof(bool) == sizeof(char), "pk_null_ holds bools");
	Datum empty = PointerGetDatum(empty_context_.data());
	auto at = [&](size_t offset) { return PointerGetDatum(batch.At(offset)); };
	for (size_t i = 0; i < count; i++) {
		const Batch::Row &row = batch.Rows()[i];
		c.pk_null[i] = row.pk == Batch::kNone;
		c.pk[i] = row.pk == Batch::kNone ? Datum(0) : at(row.pk);
		c.before[i] = at(row.before);
		c.after[i] = at(row.after);
		c.context[i] = row.context == Batch::kNone ? empty : at(row.context);
		c.schema[i] = at(row.schema);
		c.table[i] = at(row.table);
		c.operation[i] = at(row.operation);
		c.committed[i] = TimestampTzGetDatum(row.committed);
		c.xid[i] = Int64GetDatum(static_cast<int64>(row.xid));
		c.position[i] = LSNGetDatum(row.position);
		c.table_oid[i] = ObjectIdGetDatum(row.table_oid);
	}
	return c;
}

// The worker's statements run as superuser: besides the worker's fixed search_path, each names
// pg_catalog's functions and bemi's tables explicitly. ROWS FROM with one pg_catalog.unnest per
// column (a qualified unnest takes one array) pairs the columns row by row.
// On a schema older than the library (no bemi.changes.table_oid) the changes are written without
// it: NULL there means "go by name", which is how that schema's readers go anyway. Nothing is
// dropped, and the log says at every (re)start what to run.
void BatchWriter::PreparePlans() {
	Oid insert_types[kInsertArgs] = {
	    TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID,       JSONBARRAYOID, TEXTOID,        TEXTARRAYOID,
	    TEXTARRAYOID, TEXTARRAYOID,  TIMESTAMPTZARRAYOID, INT8ARRAYOID,  PG_LSNARRAYOID, OIDARRAYOID};
	Oid progress_types[3] = {PG_LSNOID, INT8OID, BOOLOID};
	bool with_table_oid = ChangesHaveTableOid();

	if (insert_plan_ && insert_has_table_oid_ == with_table_oid)
		return;
	if (insert_plan_) {
		SPI_freeplan(insert_plan_);
		SPI_freeplan(progress_plan_);
		insert_plan_ = progress_plan_ = nullptr;
	}
	if (!with_table_oid)
		ereport(
		    WARNING,
		    (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		     errmsg("bemi: the SQL of extension bemi in database \"%s\" is older than its library",
		            database_.c_str()),
		     errdetail("bemi.changes has no column table_oid: changes are recorded without it, and history "
		               "goes by table name."),
		     errhint("Run ALTER EXTENSION bemi UPDATE in database \"%s\".", database_.c_str())));
	// $12 is declared either way; the older statement leaves it unused.
	insert_plan_ = SPI_prepare(
	    with_table_oid
	        ? "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema, "
	          "\"table\","
	          " operation, committed_at, transaction_id, position, table_oid)"
	          " SELECT pk, b, a, c, $5, s, t, o, ts, x, p, r"
	          " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
	          " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
	          " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), "
	          "pg_catalog.unnest($12))"
	          " AS u(pk, b, a, c, s, t, o, ts, x, p, r)"
	        : "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema, "
	          "\"table\","
	          " operation, committed_at, transaction_id, position)"
	          " SELECT pk, b, a, c, $5, s, t, o, ts, x, p"
	          " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
	          " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
	          " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11))"
	          " AS u(pk, b, a, c, s, t, o, ts, x, p)",
	    kInsertArgs, insert_types);
	insert_has_table_oid_ = with_table_oid;
	progress_plan_ =
	    SPI_prepare("UPDATE bemi.progress SET txn_end_lsn = $1, txn_records = $2, txn_complete = $3,"
	                " updated_at = pg_catalog.now()",
	                3, progress_types);
	if (insert_plan_ == nullptr || progress_plan_ == nullptr)
		elog(ERROR, "bemi: could not prepare the worker's statements: %s",
		     SPI_result_code_string(SPI_result));
	SPI_keepplan(insert_plan_);
	SPI_keepplan(progress_plan_);
}

// Inserts rows first .. first + count - 1 with one statement. C-style, inside PgCall only.
void BatchWriter::InsertRows(const Columns &c, int first, int count) {
	Datum args[kInsertArgs];

	args[0] = MakeArray(&c.pk[first], &c.pk_null[first], count, TEXTOID);
	args[1] = MakeArray(&c.before[first], nullptr, count, JSONBOID);
	args[2] = MakeArray(&c.after[first], nullptr, count, JSONBOID);
	args[3] = MakeArray(&c.context[first], nullptr, count, JSONBOID);
	args[4] = CStringGetTextDatum(database_.c_str());
	args[5] = MakeArray(&c.schema[first], nullptr, count, TEXTOID);
	args[6] = MakeArray(&c.table[first], nullptr, count, TEXTOID);
	args[7] = MakeArray(&c.operation[first], nullptr, count, TEXTOID);
	args[8] = MakeArray(&c.committed[first], nullptr, count, TIMESTAMPTZOID);
	args[9] = MakeArray(&c.xid[first], nullptr, count, INT8OID);
	args[10] = MakeArray(&c.position[first], nullptr, count, PG_LSNOID);
	args[11] = MakeArray(&c.table_oid[first], nullptr, count, OIDOID);
	int rc = SPI_execute_plan(insert_plan_, args, nullptr, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "bemi: inserting changes failed: %s", SPI_result_code_string(rc));
}

// Inserts row i alone in a subtransaction. On failure it returns the error (copied into the
// caller's context) with the subtransaction rolled back and the caller's state restored.
// C-style, inside PgCall only (PgTryCall is the guard's untemplated PG_TRY).
ErrorData *BatchWriter::TryInsertRow(const Columns &c, int i, MemoryContext row_context) {
	struct Attempt {
		BatchWriter *writer;
		const Columns *columns;
		int row;
		MemoryContext row_context;
	} attempt{this, &c, i, row_context};
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(nullptr);
	MemoryContextSwitchTo(caller); // the error is copied into the context PgTryCall finds current
	ErrorData *failure = PgTryCall(
	    [](void *p) {
		    auto *a = static_cast<Attempt *>(p);
		    MemoryContextSwitchTo(a->row_context);
		    a->writer->InsertRows(*a->columns, a->row, 1);
		    ReleaseCurrentSubTransaction();
	    },
	    &attempt);
	if (failure != nullptr)
		RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	MemoryContextReset(row_context);
	return failure;
}

// A whole batch: by table_multi_insert, or through the INSERT statement when bemi.changes has what
// that path leaves to the executor (triggers, foreign partitions: see multi_insert.cpp). The log
// says when the path changes. C-style, inside PgCall only.
void BatchWriter::InsertBatch(const Columns &c, const Turns *turns) {
	bool multi_insert = MultiInsertChanges(c, CStringGetTextDatum(database_.c_str()), turns);

	if (!multi_insert)
		InsertRows(c, 0, c.count); // in the ids turn, if any: the INSERT draws them in order
	if (multi_insert != multi_insert_) {
		multi_insert_ = multi_insert;
		ereport(LOG,
		        (errmsg(multi_insert ? "bemi: batches of changes are written with table_multi_insert again"
		                             : "bemi: batches of changes are written through INSERT statements"),
		         multi_insert ? 0
		                      : errdetail("bemi.changes has triggers, foreign partitions or columns "
		                                  "the worker's batch insert does not handle.")));
	}
}

// Careful mode, after a batch failed: each change in its own subtransaction. A change that cannot
// be written as it is gets recorded with its images replaced by the reason (and without its
// primary key if that is still not enough), so one writer's change cannot stop everybody's
// capture. A failure that even the replacement meets, or a systemic one, fails the batch: the
// worker retries it with backoff and skips nothing. Returns how many changes were replaced; *note
// describes the first. C-style, inside PgCall only.
int BatchWriter::InsertCarefully(const Columns &c, char *note, size_t note_len) {
	MemoryContext row_context =
	    AllocSetContextCreate(CurrentMemoryContext, "bemi careful row", ALLOCSET_DEFAULT_SIZES);
	int replaced = 0;

	for (int i = 0; i < c.count; i++) {
		ErrorData *first = TryInsertRow(c, i, row_context);

		CHECK_FOR_INTERRUPTS();
		if (first == nullptr)
			continue;
		if (SystemicError(first->sqlerrcode))
			ReThrowError(first);
		c.before[i] = c.after[i] = WriteErrorImage(first->message);
		ErrorData *again = TryInsertRow(c, i, row_context);
		if (again != nullptr && !SystemicError(again->sqlerrcode)) {
			// The key itself is the problem (too big for the index, say).
			c.pk_null[i] = true;
			c.pk[i] = Datum(0);
			FreeErrorData(again);
			again = TryInsertRow(c, i, row_context);
		}
		if (again != nullptr) {
			FreeErrorData(again);
			ReThrowError(first);
		}
		char *schema = TextDatumGetCString(c.schema[i]);
		char *table = TextDatumGetCString(c.table[i]);
		XLogRecPtr lsn = DatumGetLSN(c.position[i]);
		ereport(
		    WARNING,
		    (errmsg("bemi: a %s of \"%s.%s\" at %X/%X is recorded without its images: %s",
		            TextDatumGetCString(c.operation[i]), schema, table, BEMI_LSN_ARGS(lsn), first->message),
		     errdetail("The change is recorded with \"%s\" in place of its images%s.",
		               BEMI_RESERVED_KEY "_write_error", c.pk_null[i] ? " and without its primary key" : ""),
		     errhint("Find it in bemi.changes with: before ? '%s'.", BEMI_RESERVED_KEY "_write_error")));
		if (replaced++ == 0)
			snprintf(note, note_len, "a change of \"%s.%s\" at %X/%X was recorded without its images: %s",
			         schema, table, BEMI_LSN_ARGS(lsn), first->message);
		FreeErrorData(first);
	}
	MemoryContextDelete(row_context);
	return replaced;
}

// One transaction: the batch's rows and the progress they reach. The first batch after a failure
// (db->failures > 0) is written carefully, row by row; a success returns to whole batches.
// With turns (a writer process, or the decoder in the writers' order): the ids turn is taken
// before anything of bemi.changes is locked, so an earlier batch never waits for a lock behind a
// later one; bemi.progress is updated and committed in the commit turn.
void BatchWriter::Write(BemiDatabase *db, const Batch &batch, const Progress &reached, TimestampTz last_commit,
                        const Turns *turns) {
	bool remote = remote_ != nullptr;
	if (remote) {
		// The destination first: its COMMIT returns once the rows and its progress for this
		// source are durable there. bemi.progress here follows (below, without rows): a crash in
		// between is caught up at start, from the destination's progress.
		// The source's gaps recorded since the last batch travel with this one (a few at a time).
		std::vector<Gap> gaps = LoadGaps(remote_->GapsForwarded(), 100);
		PgCall([&]() { pgstat_report_activity(STATE_RUNNING, "bemi: writing a batch of changes to the destination"); });
		try {
			remote_->Write(batch, empty_context_, reached, gaps);
		} catch (...) {
			PgCall([&]() { SetReachable(db, false); });
			throw;
		}
		PgCall([&]() { SetReachable(db, true); });
	}
	Columns columns = Fill(batch);
	PgCall([&]() {
		bool careful = !remote && db->failures > 0 && (turns == nullptr || turns->careful_allowed);
		char note[BEMI_ERROR_LEN] = "";
		int replaced = 0;

		InTransactionWithSpi([&]() {
			Datum progress_args[3];

			pgstat_report_activity(STATE_RUNNING,
			                       careful ? "bemi: writing a batch of changes one by one after a failure"
			                               : "bemi: writing a batch of changes");
			if (turns != nullptr)
				WaitIdsTurn(turns);
			PreparePlans();
			// With a destination the rows are written there already.
			if (!remote && columns.count > 0 && careful)
				replaced = InsertCarefully(columns, note, sizeof(note));
			else if (!remote && columns.count > 0)
				InsertBatch(columns, turns);
			if (turns != nullptr) {
				PassIdsTurn(turns); // if the insert did not already
				WaitCommitTurn(turns);
			}
			progress_args[0] = LSNGetDatum(reached.txn_end_lsn);
			progress_args[1] = Int64GetDatum(reached.txn_records);
			progress_args[2] = BoolGetDatum(reached.txn_complete);
			int rc = SPI_execute_plan(progress_plan_, progress_args, nullptr, false, 0);
			if (rc != SPI_OK_UPDATE || SPI_processed != 1)
				elog(ERROR, "bemi: bemi.progress must hold exactly one row");
		});
		pgstat_report_activity(STATE_IDLE, nullptr);

		if (replaced > 0)
			BemiReportError(db, note); // for bemi_status().last_error; the failure count resets below
		SpinLockAcquire(&db->mutex);
		db->changes_written += columns.count;
		if (last_commit)
			db->last_commit_at = last_commit;
		db->failures = 0;
		SpinLockRelease(&db->mutex);
		BemiRecovered(db);
		// The counters move before the next batch may commit, and so before bemi_wait returns.
		if (turns != nullptr) {
			AddSkipped(db, turns->skipped);
			PassCommitTurn(turns);
		}
	});
}

} // namespace bemi
