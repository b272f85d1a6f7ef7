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
#include "commands/sequence.h"
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

constexpr int kInsertArgs = 16;
constexpr int kColumns = 15; // the per-row columns (the database is one value)
constexpr size_t kHashBytes = MAXALIGN(VARHDRSZ + kChainHashLen); // one bytea hash in hashes_

// The arena holds whole varlenas, each MAXALIGNed like palloc'd ones.
size_t Aligned(size_t size) {
	return MAXALIGN(size);
}

} // namespace

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

namespace {

void PutHashDatum(Datum d, const uint8 *hash) {
	std::memcpy(VARDATA(DatumGetPointer(d)), hash, kChainHashLen);
}

const uint8 *HashOfDatum(Datum d) {
	return reinterpret_cast<const uint8 *>(VARDATA(DatumGetPointer(d)));
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

void Batch::Digest(pg_cryptohash_ctx *ctx, const std::string &database, const std::vector<char> &empty_context) {
	auto v = [&](size_t offset) { return reinterpret_cast<const struct varlena *>(At(offset)); };
	for (Row &row : rows_) {
		ChainContent content;
		content.primary_key = row.pk == kNone ? nullptr : v(row.pk);
		content.before = v(row.before);
		content.after = v(row.after);
		content.context = row.context == kNone ? reinterpret_cast<const struct varlena *>(empty_context.data())
		                                       : v(row.context);
		content.database = database.data();
		content.database_len = database.size();
		content.schema = v(row.schema);
		content.table = v(row.table);
		content.operation = v(row.operation);
		content.committed_at = row.committed;
		content.transaction_id = static_cast<int64>(row.xid);
		content.position = row.position;
		content.table_oid_null = false;
		content.table_oid = row.table_oid;
		content.source_system_id = nullptr;
		ChainDigest(ctx, content, row.digest);
	}
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
	for (Datum **to : {&c.pk, &c.before, &c.after, &c.context, &c.schema, &c.table, &c.operation, &c.committed,
	                   &c.xid, &c.position, &c.table_oid, &c.id, &c.created, &c.hash, &c.previous_id}) {
		*to = column;
		column += count;
	}
	c.count = static_cast<int>(count);
	c.pk_null = reinterpret_cast<bool *>(pk_null_.data());
	static_assert(sizeof(bool) == sizeof(char), "pk_null_ holds bools");
	previous_null_.assign(count, 1);
	c.previous_null = reinterpret_cast<bool *>(previous_null_.data());
	digests_.resize(count * kChainHashLen);
	c.digest = digests_.data();
	hashes_.assign(count * kHashBytes, 0);
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
		std::memcpy(c.digest + i * kChainHashLen, row.digest, kChainHashLen);
		// Valid values before the ids turn fills them (routing builds rows before that).
		char *hash = hashes_.data() + i * kHashBytes;
		SET_VARSIZE(hash, VARHDRSZ + kChainHashLen);
		c.hash[i] = PointerGetDatum(hash);
		c.id[i] = c.created[i] = c.previous_id[i] = Datum(0);
	}
	return c;
}

// Which of bemi.changes' later columns the database's SQL has: table_oid not while it is still
// 0.1.0, hash and previous_id not before 0.5.0 (between `make install` of a newer library and
// ALTER EXTENSION bemi UPDATE). Checked at every batch, so the update takes effect at the next
// one, and the other way round for a downgrade. C-style, inside PgCall only.
BatchWriter::Schema BatchWriter::ChangesSchema() {
	Oid bemi_schema = get_namespace_oid("bemi", true);
	Oid changes = OidIsValid(bemi_schema) ? get_relname_relid("changes", bemi_schema) : InvalidOid;

	if (!OidIsValid(changes) || get_attnum(changes, "table_oid") == InvalidAttrNumber)
		return Schema::kNoTableOid;
	if (get_attnum(changes, "hash") == InvalidAttrNumber || get_attnum(changes, "previous_id") == InvalidAttrNumber)
		return Schema::kNoChain;
	chain_.id_sequence = get_relname_relid("changes_id_seq", bemi_schema);
	return Schema::kChain;
}

// Row i's content digest, from its values as they will be stored. C-style, inside PgCall only.
void BatchWriter::DigestRow(const Columns &c, int i) {
	ChainContent content;
	auto v = [](Datum d) { return reinterpret_cast<const struct varlena *>(DatumGetPointer(d)); };

	content.primary_key = c.pk_null[i] ? nullptr : v(c.pk[i]);
	content.before = v(c.before[i]);
	content.after = v(c.after[i]);
	content.context = v(c.context[i]);
	content.database = database_.data();
	content.database_len = database_.size();
	content.schema = v(c.schema[i]);
	content.table = v(c.table[i]);
	content.operation = v(c.operation[i]);
	content.committed_at = DatumGetTimestampTz(c.committed[i]);
	content.transaction_id = DatumGetInt64(c.xid[i]);
	content.position = DatumGetLSN(c.position[i]);
	content.table_oid_null = false;
	content.table_oid = DatumGetObjectId(c.table_oid[i]);
	content.source_system_id = nullptr;
	ChainDigest(chain_.ctx, content, c.digest + i * kChainHashLen);
}

// The chain's last change, from the trail: in the ids turn, so every earlier batch has drawn
// (a run's first batch: every earlier run's batch has committed). The change with the highest id
// is the last written; one without a hash (written before 0.5.0) starts a new chain. Changes a
// destination received from other servers are not in its chain.
// C-style, inside PgCall only.
void BatchWriter::LoadChainHead() {
	ChainHead *head = chain_.head;

	if (head_plan_ == nullptr) {
		head_plan_ = SPI_prepare("SELECT id, hash FROM bemi.changes WHERE source_system_id IS NULL ORDER BY id DESC LIMIT 1", 0, nullptr);
		if (head_plan_ == nullptr)
			elog(ERROR, "bemi: could not prepare the chain's head query: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(head_plan_);
	}
	int rc = SPI_execute_plan(head_plan_, nullptr, nullptr, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "bemi: reading the chain's head failed: %s", SPI_result_code_string(rc));
	memset(head, 0, sizeof(*head));
	head->valid = true;
	head->genesis = true;
	if (SPI_processed == 0)
		return;
	bool id_null, hash_null;
	Datum id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &id_null);
	Datum hash = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &hash_null);
	if (id_null || hash_null)
		return;
	bytea *bytes = DatumGetByteaPP(hash);
	if (VARSIZE_ANY_EXHDR(bytes) != kChainHashLen)
		return; // not one of ours: the chain starts again after it (bemi_verify names it)
	head->genesis = false;
	head->id = DatumGetInt64(id);
	std::memcpy(head->hash, VARDATA_ANY(bytes), kChainHashLen);
}

// Links rows first .. first + count - 1 (their ids and created_at drawn) one after the other,
// the first to `from`. The head does not move. C-style, inside PgCall only.
void BatchWriter::LinkRange(const Columns &c, int first, int count, const ChainHead &from) {
	const uint8 *previous = from.hash;
	static const uint8 kZero[kChainHashLen] = {};
	bool genesis = from.genesis;
	int64 previous_id = from.id;

	for (int i = first; i < first + count; i++) {
		c.previous_null[i] = genesis;
		c.previous_id[i] = Int64GetDatum(genesis ? 0 : previous_id);
		uint8 hash[kChainHashLen];
		ChainLink(chain_.ctx, genesis ? kZero : previous, DatumGetInt64(c.id[i]), DatumGetTimestampTz(c.created[i]),
		          c.digest + i * kChainHashLen, hash);
		PutHashDatum(c.hash[i], hash);
		previous = HashOfDatum(c.hash[i]);
		previous_id = DatumGetInt64(c.id[i]);
		genesis = false;
	}
}

// Row i is written (or will be, with its transaction): the next change links to it.
void BatchWriter::AdvanceHead(const Columns &c, int i) {
	ChainHead *head = chain_.head;

	head->genesis = false;
	head->id = DatumGetInt64(c.id[i]);
	std::memcpy(head->hash, HashOfDatum(c.hash[i]), kChainHashLen);
}

// For the INSERT statement: ids from bemi.changes' sequence and created_at now, per row in order
// (what the column defaults give). C-style, inside PgCall only.
void BatchWriter::DrawIdsAndTimes(const Columns &c, int first, int count) {
	if (!OidIsValid(chain_.id_sequence))
		elog(ERROR, "bemi: bemi.changes_id_seq is missing");
	for (int i = first; i < first + count; i++) {
		c.id[i] = Int64GetDatum(nextval_internal(chain_.id_sequence, false));
		c.created[i] = TimestampTzGetDatum(GetCurrentTimestamp());
	}
}

void BatchWriter::LinkRows(const Columns &c, int first, int count) {
	for (int i = first; i < first + count; i++)
		c.created[i] = TimestampTzGetDatum(GetCurrentTimestamp());
	LinkRange(c, first, count, *chain_.head);
	if (count > 0)
		AdvanceHead(c, first + count - 1);
}

// The worker's statements run as superuser: besides the worker's fixed search_path, each names
// pg_catalog's functions and bemi's tables explicitly. ROWS FROM with one pg_catalog.unnest per
// column (a qualified unnest takes one array) pairs the columns row by row.
// On a schema older than the library (no bemi.changes.table_oid, no hash) the changes are written
// without those columns: NULL table_oid means "go by name", which is how that schema's readers go
// anyway; no hash means not chained yet (bemi_verify starts at the first chained change). Nothing
// is dropped, and the log says at every (re)start what to run.
// With the chain the statement takes the ids and created_at the worker drew (OVERRIDING SYSTEM
// VALUE), as the links cover them.
void BatchWriter::PreparePlans(Schema schema) {
	Oid insert_types[kInsertArgs] = {
	    TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID,       JSONBARRAYOID, TEXTOID,        TEXTARRAYOID,
	    TEXTARRAYOID, TEXTARRAYOID,  TIMESTAMPTZARRAYOID, INT8ARRAYOID,  PG_LSNARRAYOID, OIDARRAYOID,
	    INT8ARRAYOID, TIMESTAMPTZARRAYOID, BYTEAARRAYOID, INT8ARRAYOID};
	Oid progress_types[3] = {PG_LSNOID, INT8OID, BOOLOID};

	if (insert_plan_ && insert_schema_ == schema)
		return;
	if (insert_plan_) {
		SPI_freeplan(insert_plan_);
		SPI_freeplan(progress_plan_);
		insert_plan_ = progress_plan_ = nullptr;
	}
	if (schema != Schema::kChain)
		ereport(
		    WARNING,
		    (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		     errmsg("bemi: the SQL of extension bemi in database \"%s\" is older than its library",
		            database_.c_str()),
		     schema == Schema::kNoTableOid
		         ? errdetail("bemi.changes has no column table_oid: changes are recorded without it, and "
		                     "history goes by table name.")
		         : errdetail("bemi.changes has no columns hash and previous_id: changes are recorded without "
		                     "the hash chain until the update."),
		     errhint("Run ALTER EXTENSION bemi UPDATE in database \"%s\".", database_.c_str())));
	// $12 .. $16 are declared either way; the older statements leave them unused.
	const char *statement = nullptr;
	switch (schema) {
	case Schema::kChain:
		statement = "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema,"
		            " \"table\", operation, committed_at, transaction_id, position, table_oid, id, created_at,"
		            " hash, previous_id) OVERRIDING SYSTEM VALUE"
		            " SELECT pk, b, a, c, $5, s, t, o, ts, x, p, r, i, ca, h, pi"
		            " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		            " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
		            " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11),"
		            " pg_catalog.unnest($12), pg_catalog.unnest($13), pg_catalog.unnest($14),"
		            " pg_catalog.unnest($15), pg_catalog.unnest($16))"
		            " AS u(pk, b, a, c, s, t, o, ts, x, p, r, i, ca, h, pi)";
		break;
	case Schema::kNoChain:
		statement = "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema,"
		            " \"table\", operation, committed_at, transaction_id, position, table_oid)"
		            " SELECT pk, b, a, c, $5, s, t, o, ts, x, p, r"
		            " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		            " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
		            " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11),"
		            " pg_catalog.unnest($12))"
		            " AS u(pk, b, a, c, s, t, o, ts, x, p, r)";
		break;
	case Schema::kNoTableOid:
		statement = "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema,"
		            " \"table\", operation, committed_at, transaction_id, position)"
		            " SELECT pk, b, a, c, $5, s, t, o, ts, x, p"
		            " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		            " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
		            " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11))"
		            " AS u(pk, b, a, c, s, t, o, ts, x, p)";
		break;
	}
	insert_plan_ = SPI_prepare(statement, kInsertArgs, insert_types);
	insert_schema_ = schema;
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

// Inserts rows first .. first + count - 1 with one statement; with the chain, draws their ids
// and links them first, and moves the head once they are in. C-style, inside PgCall only.
void BatchWriter::InsertRows(const Columns &c, int first, int count) {
	Datum args[kInsertArgs];

	if (chained_) {
		DrawIdsAndTimes(c, first, count);
		LinkRange(c, first, count, *chain_.head);
	}

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
	args[12] = MakeArray(&c.id[first], nullptr, count, INT8OID);
	args[13] = MakeArray(&c.created[first], nullptr, count, TIMESTAMPTZOID);
	args[14] = MakeArray(&c.hash[first], nullptr, count, BYTEAOID);
	args[15] = MakeArray(&c.previous_id[first], &c.previous_null[first], count, INT8OID);
	int rc = SPI_execute_plan(insert_plan_, args, nullptr, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "bemi: inserting changes failed: %s", SPI_result_code_string(rc));
	if (chained_ && count > 0)
		AdvanceHead(c, first + count - 1);
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
	bool multi_insert = MultiInsertChanges(*this, c, CStringGetTextDatum(database_.c_str()), turns);

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
		if (chained_)
			DigestRow(c, i);
		ErrorData *again = TryInsertRow(c, i, row_context);
		if (again != nullptr && !SystemicError(again->sqlerrcode)) {
			// The key itself is the problem (too big for the index, say).
			c.pk_null[i] = true;
			c.pk[i] = Datum(0);
			if (chained_)
				DigestRow(c, i);
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
// The chain: each row's content digest is computed by the decoder (Sink::WriteBatch) before the
// batch reaches a writer; in the ids turn, only the links (one small hash per row) from the head the previous batch
// left, in the writers' shared state (or head_ when the worker writes alone). A batch that fails
// fails its run (the worker restarts, and its first batch reads the head from the trail).
void BatchWriter::Write(BemiDatabase *db, const Batch &batch, const Progress &reached, TimestampTz last_commit,
                        const Turns *turns) {
	if (remote_ != nullptr) {
		// The destination first: the batch is sent there and written here (bemi.progress only,
		// without rows) once the destination has it durably: when a later batch needs its
		// connection, or Settle() is called. A crash in between is caught up at start, from the
		// destination's progress. The source's gaps recorded since the last batch sent travel with
		// this one (a few at a time).
		if (remote_->Full())
			SettleOldest(db, false);
		std::vector<Gap> gaps = LoadGaps(remote_->GapsForwarded(), 100);
		PgCall([&]() { pgstat_report_activity(STATE_RUNNING, "bemi: writing a batch of changes to the destination"); });
		try {
			remote_->Send(batch, empty_context_, reached, gaps);
		} catch (...) {
			sent_.clear(); // the connections are dropped: the next run starts from the destination's progress
			PgCall([&]() { SetReachable(db, false); });
			throw;
		}
		sent_.push_back(Sent{reached, last_commit, static_cast<int>(batch.Count())});
		sent_count_++;
		return;
	}
	Columns columns = Fill(batch);
	try {
		WriteColumns(db, columns, reached, last_commit, turns);
	} catch (...) {
		head_.valid = false; // the head may have moved past rows that are not written
		throw;
	}
}

void BatchWriter::Settle(BemiDatabase *db) {
	if (!sent_.empty())
		SettleOldest(db, true);
}

void BatchWriter::Pump() noexcept {
	if (remote_ != nullptr)
		remote_->Pump();
}

// all: every batch in flight, their progress written here once, in one transaction.
void BatchWriter::SettleOldest(BemiDatabase *db, bool all) {
	PgCall([&]() { pgstat_report_activity(STATE_RUNNING, "bemi: waiting for the destination's COMMIT"); });
	Sent last = {};
	int count = 0;
	uint64 settled = 0;
	try {
		do {
			remote_->SettleOldest();
			last = sent_.front();
			sent_.pop_front();
			count += last.count;
			settled++;
		} while (all && !sent_.empty());
	} catch (...) {
		sent_.clear(); // the worker run fails; the next starts from the destination's progress
		PgCall([&]() { SetReachable(db, false); });
		throw;
	}
	PgCall([&]() { SetReachable(db, true); });
	Columns columns{};
	columns.count = count;
	WriteColumns(db, columns, last.reached, last.last_commit, nullptr);
	settled_count_ += settled;
}

void BatchWriter::WriteColumns(BemiDatabase *db, const Columns &columns, const Progress &reached,
                               TimestampTz last_commit, const Turns *turns) {
	bool remote = remote_ != nullptr;
	PgCall([&]() {
		bool careful = !remote && db->failures > 0 && (turns == nullptr || turns->careful_allowed);
		char note[BEMI_ERROR_LEN] = "";
		int replaced = 0;

		InTransactionWithSpi([&]() {
			Datum progress_args[3];

			pgstat_report_activity(STATE_RUNNING,
			                       careful ? "bemi: writing a batch of changes one by one after a failure"
			                               : "bemi: writing a batch of changes");
			Schema schema = ChangesSchema();
			// With a destination the rows are written there, without the chain (not yet: the
			// destination draws their ids).
			chained_ = !remote && schema == Schema::kChain;
			if (chained_) {
				chain_.ctx = ChainHasher();
				chain_.head = turns != nullptr ? SharedChainHead(turns) : &head_;
			}
			if (turns != nullptr)
				WaitIdsTurn(turns);
			// With a destination the rows are written there already.
			PreparePlans(schema);
			// Read when a batch first has rows: a restore loads the trail after the worker
			// started (its own batches hold progress only until then).
			if (chained_ && columns.count > 0 && !chain_.head->valid)
				LoadChainHead();
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
			if (chained_) {
				pg_cryptohash_free(chain_.ctx);
				chain_.ctx = nullptr;
			}
		});
		pgstat_report_activity(STATE_IDLE, nullptr);
		// The rows count in the cumulative statistics, by which autovacuum vacuums and analyzes
		// the trail (a background worker reports them itself; at most once a second).
		(void)pgstat_report_stat(false);

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
