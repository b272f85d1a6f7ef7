/*
 * sink.c: from decoded records to rows of bemi.changes.
 *
 * While a transaction is replayed the plugin appends its records to the spool (memory, then a
 * file). Between WAL records the worker drains the spool in batches: one multi-row INSERT per
 * batch and the new progress, in one transaction. Progress counts records within a transaction,
 * so a crash in the middle of a huge transaction resumes exactly where the last batch ended.
 */
#include "bemi/worker.h"
#include "bemi/spool.h"
#include "bemi/decoding.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define SPOOL_MEMORY (16 * 1024 * 1024)
#define BATCH_BYTES (64 * 1024 * 1024)

bool bemi_sink_active = false;

typedef enum EntryKind
{
	ENTRY_BEGIN = 'B',
	ENTRY_CONTEXT = 'X',
	ENTRY_CHANGE = 'C',
	ENTRY_COMMIT = 'E'
} EntryKind;

typedef struct EntryHeader
{
	char kind;
	uint32 size; /* payload bytes that follow */
} EntryHeader;

typedef struct BeginEntry
{
	TransactionId xid;
	XLogRecPtr end_lsn;
	TimestampTz commit_time;
} BeginEntry;

/* A change entry: this, then schema, table, primary key, before, after (lengths below). */
typedef struct ChangeEntry
{
	XLogRecPtr lsn;
	char operation[12];
	int32 schema_len;
	int32 table_len;
	int32 pk_len; /* -1: no primary key */
	int32 before_len;
	int32 after_len;
} ChangeEntry;

static struct
{
	BemiSpool *spool;
	BemiProgress done;       /* what bemi.changes already holds */
	int64 skip_records;      /* records of the current transaction written by an earlier run */
	int64 txn_ordinal;       /* records of the current transaction seen so far */
	int64 pending_changes;
	char *database;
	SPIPlanPtr insert_plan;
	SPIPlanPtr progress_plan;
	MemoryContext batch_context;
	Jsonb *empty_context;
} sink;

static void
SpoolAppend(EntryKind kind, const void *fixed, uint32 fixed_size, const void *const *parts,
			const int32 *sizes, int nparts)
{
	EntryHeader header = {kind, fixed_size};
	const char *error = NULL;

	for (int i = 0; i < nparts; i++)
		header.size += Max(sizes[i], 0);
	if (!BemiSpoolAppend(sink.spool, &header, sizeof(header), &error) ||
		!BemiSpoolAppend(sink.spool, fixed, fixed_size, &error))
		ereport(ERROR, (errcode_for_file_access(), errmsg("%s", error)));
	for (int i = 0; i < nparts; i++)
		if (sizes[i] > 0 && !BemiSpoolAppend(sink.spool, parts[i], sizes[i], &error))
			ereport(ERROR, (errcode_for_file_access(), errmsg("%s", error)));
}

void
BemiSinkStart(Oid dboid, const BemiProgress *progress)
{
	char path[MAXPGPATH];
	const char *error = NULL;
	MemoryContext caller = CurrentMemoryContext;

	/*
	 * In base/pgsql_tmp, named like PostgreSQL's own temporary files: the server removes it at
	 * start and after a crash, and the database's next worker replaces a leftover.
	 */
	MakePGDirectory("base/" PG_TEMP_FILES_DIR);
	snprintf(path, sizeof(path), "base/%s/%sbemi_spool_%u", PG_TEMP_FILES_DIR, PG_TEMP_FILE_PREFIX, dboid);
	sink.spool = BemiSpoolCreate(path, SPOOL_MEMORY, &error);
	if (sink.spool == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("%s", error)));
	sink.done = *progress;
	sink.batch_context = AllocSetContextCreate(TopMemoryContext, "bemi batch", ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	sink.database = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		sink.empty_context = BemiEmptyImage();
		MemoryContextSwitchTo(old);
	}
	bemi_sink_active = true;
}

void
BemiSinkStop(void)
{
	if (sink.spool)
		BemiSpoolDestroy(sink.spool);
	sink.spool = NULL;
	bemi_sink_active = false;
}

bool
BemiSinkPending(void)
{
	return sink.spool && BemiSpoolBytes(sink.spool) > 0;
}

int64
BemiSinkPendingChanges(void)
{
	return sink.pending_changes;
}

/* Called by the plugin at BEGIN: is this whole transaction already written? */
bool
BemiSinkSkipTransaction(XLogRecPtr end_lsn)
{
	sink.skip_records = 0;
	sink.txn_ordinal = 0;
	if (end_lsn < sink.done.txn_end_lsn)
		return true;
	if (end_lsn == sink.done.txn_end_lsn)
	{
		if (sink.done.txn_complete)
			return true;
		sink.skip_records = sink.done.txn_records;
	}
	return false;
}

void
BemiSinkBegin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time)
{
	BeginEntry entry = {xid, end_lsn, commit_time};

	SpoolAppend(ENTRY_BEGIN, &entry, sizeof(entry), NULL, NULL, 0);
}

void
BemiSinkContext(Jsonb *context)
{
	const void *parts[1] = {context};
	int32 sizes[1] = {VARSIZE(context)};

	SpoolAppend(ENTRY_CONTEXT, NULL, 0, parts, sizes, 1);
}

void
BemiSinkChange(XLogRecPtr lsn, const BemiChange *change)
{
	ChangeEntry entry;
	const void *parts[5];
	int32 sizes[5];

	/* Ordinals count every record, skipped or not, so they match across runs. */
	if (++sink.txn_ordinal <= sink.skip_records)
		return;
	memset(&entry, 0, sizeof(entry));
	entry.lsn = lsn;
	strlcpy(entry.operation, change->operation, sizeof(entry.operation));
	entry.schema_len = sizes[0] = strlen(change->schema);
	parts[0] = change->schema;
	entry.table_len = sizes[1] = strlen(change->table);
	parts[1] = change->table;
	entry.pk_len = change->primary_key ? (int32) VARSIZE_ANY_EXHDR(change->primary_key) : -1;
	sizes[2] = entry.pk_len;
	parts[2] = change->primary_key ? VARDATA_ANY(change->primary_key) : NULL;
	entry.before_len = sizes[3] = VARSIZE(change->before);
	parts[3] = change->before;
	entry.after_len = sizes[4] = VARSIZE(change->after);
	parts[4] = change->after;
	SpoolAppend(ENTRY_CHANGE, &entry, sizeof(entry), parts, sizes, 5);
	sink.pending_changes++;
}

void
BemiSinkCommit(XLogRecPtr end_lsn)
{
	SpoolAppend(ENTRY_COMMIT, &end_lsn, sizeof(end_lsn), NULL, NULL, 0);
}

/* ---- draining ---- */

typedef struct Batch
{
	int count;
	int capacity;
	Size bytes;
	Datum *pk, *before, *after, *context, *schema, *table, *operation, *committed, *xid, *position;
	bool *pk_null;
} Batch;

static void
BatchInit(Batch *b, int capacity)
{
	b->count = 0;
	b->bytes = 0;
	b->capacity = capacity;
#define ALLOC_COLUMN(c) b->c = palloc(sizeof(Datum) * capacity)
	ALLOC_COLUMN(pk);
	ALLOC_COLUMN(before);
	ALLOC_COLUMN(after);
	ALLOC_COLUMN(context);
	ALLOC_COLUMN(schema);
	ALLOC_COLUMN(table);
	ALLOC_COLUMN(operation);
	ALLOC_COLUMN(committed);
	ALLOC_COLUMN(xid);
	ALLOC_COLUMN(position);
#undef ALLOC_COLUMN
	b->pk_null = palloc0(sizeof(bool) * capacity);
}

static Datum
MakeArray(Datum *values, bool *nulls, int count, Oid type)
{
	int16 typlen;
	bool typbyval;
	char typalign;
	int dims[1] = {count};
	int lbs[1] = {1};

	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type, typlen, typbyval, typalign));
}

static void
PreparePlans(void)
{
	Oid insert_types[11] = {TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, JSONBARRAYOID, TEXTOID,
							TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
							INT8ARRAYOID, PG_LSNARRAYOID};
	Oid progress_types[3] = {PG_LSNOID, INT8OID, BOOLOID};

	if (sink.insert_plan)
		return;
	sink.insert_plan = SPI_prepare(
		"INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema, \"table\","
		" operation, committed_at, transaction_id, position)"
		" SELECT pk, b, a, c, $5, s, t, o, ts, x, p"
		" FROM unnest($1, $2, $3, $4, $6, $7, $8, $9, $10, $11) AS u(pk, b, a, c, s, t, o, ts, x, p)",
		11, insert_types);
	sink.progress_plan = SPI_prepare(
		"UPDATE bemi.progress SET txn_end_lsn = $1, txn_records = $2, txn_complete = $3, updated_at = now()",
		3, progress_types);
	if (sink.insert_plan == NULL || sink.progress_plan == NULL)
		elog(ERROR, "bemi: could not prepare the worker's statements: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(sink.insert_plan);
	SPI_keepplan(sink.progress_plan);
}

/* One transaction: the batch's rows and the progress they reach. */
static void
WriteBatch(BemiDatabase *db, Batch *b, const BemiProgress *reached, TimestampTz last_commit)
{
	Datum args[11];
	Datum progress_args[3];
	int rc;
	MemoryContext caller = CurrentMemoryContext; /* commit leaves us in TopMemoryContext */

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bemi: writing a batch of changes");
	PreparePlans();

	if (b->count > 0)
	{
		args[0] = MakeArray(b->pk, b->pk_null, b->count, TEXTOID);
		args[1] = MakeArray(b->before, NULL, b->count, JSONBOID);
		args[2] = MakeArray(b->after, NULL, b->count, JSONBOID);
		args[3] = MakeArray(b->context, NULL, b->count, JSONBOID);
		args[4] = CStringGetTextDatum(sink.database);
		args[5] = MakeArray(b->schema, NULL, b->count, TEXTOID);
		args[6] = MakeArray(b->table, NULL, b->count, TEXTOID);
		args[7] = MakeArray(b->operation, NULL, b->count, TEXTOID);
		args[8] = MakeArray(b->committed, NULL, b->count, TIMESTAMPTZOID);
		args[9] = MakeArray(b->xid, NULL, b->count, INT8OID);
		args[10] = MakeArray(b->position, NULL, b->count, PG_LSNOID);
		rc = SPI_execute_plan(sink.insert_plan, args, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "bemi: inserting changes failed: %s", SPI_result_code_string(rc));
	}
	progress_args[0] = LSNGetDatum(reached->txn_end_lsn);
	progress_args[1] = Int64GetDatum(reached->txn_records);
	progress_args[2] = BoolGetDatum(reached->txn_complete);
	rc = SPI_execute_plan(sink.progress_plan, progress_args, NULL, false, 0);
	if (rc != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "bemi: bemi.progress must hold exactly one row");

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	pgstat_report_activity(STATE_IDLE, NULL);

	sink.done = *reached;
	SpinLockAcquire(&db->mutex);
	db->changes_written += b->count;
	if (last_commit)
		db->last_commit_at = last_commit;
	db->failures = 0;
	SpinLockRelease(&db->mutex);
}

static bool
ReadExact(void *data, size_t size)
{
	bool eof;
	const char *error = NULL;

	if (!BemiSpoolRead(sink.spool, data, size, &eof, &error))
		ereport(ERROR, (errcode_for_file_access(), errmsg("%s", error)));
	return !eof;
}

static void *
ReadPart(int32 size)
{
	void *part = palloc(Max(size, 1));

	if (size > 0 && !ReadExact(part, size))
		elog(ERROR, "bemi: spool ended inside a record");
	return part;
}

/* Writes everything the spool holds, in batches of bemi.batch_size changes. */
void
BemiSinkDrain(BemiDatabase *db)
{
	MemoryContext old = MemoryContextSwitchTo(sink.batch_context);
	Batch batch;
	EntryHeader header;
	BeginEntry txn = {0};
	BemiProgress reached = sink.done;
	TimestampTz last_commit = 0;
	Jsonb *context = sink.empty_context;
	Jsonb *carried = NULL; /* the current context, kept across a batch boundary */
	const char *error = NULL;

	BatchInit(&batch, bemi_batch_size);
	while (ReadExact(&header, sizeof(header)))
	{
		switch (header.kind)
		{
			case ENTRY_BEGIN:
				ReadExact(&txn, sizeof(txn));
				context = sink.empty_context;
				reached.txn_end_lsn = txn.end_lsn;
				reached.txn_records = txn.end_lsn == sink.done.txn_end_lsn ? sink.done.txn_records : 0;
				reached.txn_complete = false;
				break;
			case ENTRY_CONTEXT:
				context = ReadPart(header.size);
				break;
			case ENTRY_COMMIT:
				{
					XLogRecPtr end_lsn;

					ReadExact(&end_lsn, sizeof(end_lsn));
					reached.txn_complete = true;
					last_commit = txn.commit_time;
					break;
				}
			case ENTRY_CHANGE:
				{
					ChangeEntry entry;
					int i = batch.count;

					ReadExact(&entry, sizeof(entry));
					batch.schema[i] = PointerGetDatum(cstring_to_text_with_len(ReadPart(entry.schema_len), entry.schema_len));
					batch.table[i] = PointerGetDatum(cstring_to_text_with_len(ReadPart(entry.table_len), entry.table_len));
					batch.pk_null[i] = entry.pk_len < 0;
					batch.pk[i] = entry.pk_len < 0 ? (Datum) 0
						: PointerGetDatum(cstring_to_text_with_len(ReadPart(entry.pk_len), entry.pk_len));
					batch.before[i] = PointerGetDatum(ReadPart(entry.before_len));
					batch.after[i] = PointerGetDatum(ReadPart(entry.after_len));
					batch.operation[i] = CStringGetTextDatum(entry.operation);
					batch.context[i] = JsonbPGetDatum(context);
					batch.committed[i] = TimestampTzGetDatum(txn.commit_time);
					batch.xid[i] = Int64GetDatum((int64) txn.xid);
					batch.position[i] = LSNGetDatum(entry.lsn);
					batch.count++;
					batch.bytes += entry.before_len + entry.after_len + entry.pk_len;
					reached.txn_records++;
					break;
				}
			default:
				elog(ERROR, "bemi: corrupt spool entry '%c'", header.kind);
		}
		if (batch.count >= batch.capacity || batch.bytes >= BATCH_BYTES)
		{
			Jsonb *previous = carried;

			WriteBatch(db, &batch, &reached, last_commit);
			/* The current context outlives the batch's memory: carry a copy over. */
			if (context != sink.empty_context && context != carried)
			{
				carried = MemoryContextAlloc(TopMemoryContext, VARSIZE(context));
				memcpy(carried, context, VARSIZE(context));
				context = carried;
				if (previous)
					pfree(previous);
			}
			MemoryContextReset(sink.batch_context);
			BatchInit(&batch, bemi_batch_size);
		}
	}
	if (batch.count > 0 || reached.txn_end_lsn != sink.done.txn_end_lsn ||
		reached.txn_complete != sink.done.txn_complete)
		WriteBatch(db, &batch, &reached, last_commit);
	if (!BemiSpoolReset(sink.spool, &error))
		ereport(ERROR, (errcode_for_file_access(), errmsg("%s", error)));
	sink.pending_changes = 0;
	if (carried)
		pfree(carried);
	MemoryContextSwitchTo(old);
	MemoryContextReset(sink.batch_context);
}

BemiProgress
BemiLoadProgress(void)
{
	BemiProgress progress = {InvalidXLogRecPtr, 0, true};
	bool isnull;
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT txn_end_lsn, txn_records, txn_complete FROM bemi.progress", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "bemi: bemi.progress must hold exactly one row");
	progress.txn_end_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	progress.txn_records = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	progress.txn_complete = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	return progress;
}

/* Capture lost changes (a missing or invalidated slot): say so in bemi.gaps, never silently. */
void
BemiRecordGap(XLogRecPtr from_lsn, const char *reason)
{
	Oid types[3] = {PG_LSNOID, PG_LSNOID, TEXTOID};
	Datum args[3];
	char nulls[3] = {' ', ' ', ' '};
	MemoryContext caller = CurrentMemoryContext;

	args[0] = LSNGetDatum(from_lsn);
	args[1] = LSNGetDatum(GetXLogInsertRecPtr());
	args[2] = CStringGetTextDatum(reason);
	nulls[0] = XLogRecPtrIsInvalid(from_lsn) ? 'n' : ' ';
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_with_args("INSERT INTO bemi.gaps (from_lsn, to_lsn, reason) VALUES ($1, $2, $3)",
							  3, types, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "bemi: could not record a gap in bemi.gaps");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
}
