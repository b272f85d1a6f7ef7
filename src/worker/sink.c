/*
 * sink.c: from decoded records to rows of bemi.changes.
 *
 * While a transaction is replayed the plugin appends its records to the spool (memory, then a
 * file). Between WAL records the worker drains the spool in batches: one multi-row INSERT per
 * batch and the new progress, in one transaction. Progress counts records within a transaction,
 * so a crash in the middle of a huge transaction resumes exactly where the last batch ended.
 * After a failed batch the next one is written change by change, so that one change that cannot
 * be written is recorded with its reason instead of stopping everybody's capture. The worker runs
 * as superuser: its statements name pg_catalog's functions and bemi's tables explicitly.
 */
#include "bemi/worker.h"
#include "bemi/spool.h"
#include "bemi/decoding.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#if PG_VERSION_NUM >= 180000
#include "common/file_utils.h"	/* PG_TEMP_FILES_DIR moved here from storage/fd.h in 18 */
#endif
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "catalog/namespace.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define SPOOL_MEMORY (16 * 1024 * 1024)
#define BATCH_BYTES (64 * 1024 * 1024) /* every byte a batch's column arrays hold, far below 1 GB */
#define INSERT_ARGS 12

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
	Oid table_oid;
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
	bool insert_has_table_oid; /* insert_plan writes bemi.changes.table_oid */
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
	entry.table_oid = change->table_oid;
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
	Datum *pk, *before, *after, *context, *schema, *table, *operation, *committed, *xid, *position, *table_oid;
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
	ALLOC_COLUMN(table_oid);
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

/*
 * Does bemi.changes have table_oid? Not while the database's SQL is still 0.1.0: between
 * `make install` of a newer library and ALTER EXTENSION bemi UPDATE (checked at every batch, so
 * the update takes effect at the next one, and the other way round for a downgrade).
 */
static bool
ChangesHaveTableOid(void)
{
	Oid bemi_schema = get_namespace_oid("bemi", true);
	Oid changes = OidIsValid(bemi_schema) ? get_relname_relid("changes", bemi_schema) : InvalidOid;

	return OidIsValid(changes) && get_attnum(changes, "table_oid") != InvalidAttrNumber;
}

/*
 * The worker's statements run as superuser: besides the worker's fixed search_path, each names
 * pg_catalog's functions and bemi's tables explicitly. ROWS FROM with one pg_catalog.unnest per
 * column (a qualified unnest takes one array) pairs the columns row by row.
 * On a schema older than the library (no bemi.changes.table_oid) the changes are written without
 * it: NULL there means "go by name", which is how that schema's readers go anyway. Nothing is
 * dropped, and the log says at every (re)start what to run.
 */
static void
PreparePlans(void)
{
	Oid insert_types[INSERT_ARGS] = {TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, JSONBARRAYOID, TEXTOID,
									 TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
									 INT8ARRAYOID, PG_LSNARRAYOID, OIDARRAYOID};
	Oid progress_types[3] = {PG_LSNOID, INT8OID, BOOLOID};
	bool with_table_oid = ChangesHaveTableOid();

	if (sink.insert_plan && sink.insert_has_table_oid == with_table_oid)
		return;
	if (sink.insert_plan)
	{
		SPI_freeplan(sink.insert_plan);
		SPI_freeplan(sink.progress_plan);
		sink.insert_plan = sink.progress_plan = NULL;
	}
	if (!with_table_oid)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bemi: the SQL of extension bemi in database \"%s\" is older than its library", sink.database),
				 errdetail("bemi.changes has no column table_oid: changes are recorded without it, and history "
						   "goes by table name."),
				 errhint("Run ALTER EXTENSION bemi UPDATE in database \"%s\".", sink.database)));
	/* $12 is declared either way; the older statement leaves it unused. */
	sink.insert_plan = SPI_prepare(
		with_table_oid
			? "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema, \"table\","
			  " operation, committed_at, transaction_id, position, table_oid)"
			  " SELECT pk, b, a, c, $5, s, t, o, ts, x, p, r"
			  " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
			  " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
			  " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12))"
			  " AS u(pk, b, a, c, s, t, o, ts, x, p, r)"
			: "INSERT INTO bemi.changes (primary_key, \"before\", \"after\", context, database, schema, \"table\","
			  " operation, committed_at, transaction_id, position)"
			  " SELECT pk, b, a, c, $5, s, t, o, ts, x, p"
			  " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
			  " pg_catalog.unnest($4), pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
			  " pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11))"
			  " AS u(pk, b, a, c, s, t, o, ts, x, p)",
		INSERT_ARGS, insert_types);
	sink.insert_has_table_oid = with_table_oid;
	sink.progress_plan = SPI_prepare(
		"UPDATE bemi.progress SET txn_end_lsn = $1, txn_records = $2, txn_complete = $3,"
		" updated_at = pg_catalog.now()",
		3, progress_types);
	if (sink.insert_plan == NULL || sink.progress_plan == NULL)
		elog(ERROR, "bemi: could not prepare the worker's statements: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(sink.insert_plan);
	SPI_keepplan(sink.progress_plan);
}

/* Inserts rows first .. first + count - 1 of the batch with one statement. */
static void
InsertRows(Batch *b, int first, int count)
{
	Datum args[INSERT_ARGS];
	int rc;

	args[0] = MakeArray(&b->pk[first], &b->pk_null[first], count, TEXTOID);
	args[1] = MakeArray(&b->before[first], NULL, count, JSONBOID);
	args[2] = MakeArray(&b->after[first], NULL, count, JSONBOID);
	args[3] = MakeArray(&b->context[first], NULL, count, JSONBOID);
	args[4] = CStringGetTextDatum(sink.database);
	args[5] = MakeArray(&b->schema[first], NULL, count, TEXTOID);
	args[6] = MakeArray(&b->table[first], NULL, count, TEXTOID);
	args[7] = MakeArray(&b->operation[first], NULL, count, TEXTOID);
	args[8] = MakeArray(&b->committed[first], NULL, count, TIMESTAMPTZOID);
	args[9] = MakeArray(&b->xid[first], NULL, count, INT8OID);
	args[10] = MakeArray(&b->position[first], NULL, count, PG_LSNOID);
	args[11] = MakeArray(&b->table_oid[first], NULL, count, OIDOID);
	rc = SPI_execute_plan(sink.insert_plan, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "bemi: inserting changes failed: %s", SPI_result_code_string(rc));
}

/* {"_bemi_write_error": "<message>"}: what is recorded instead of images that could not be. */
static Datum
WriteErrorImage(const char *message)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, BEMI_RESERVED_KEY "_write_error");
	appendStringInfoString(&buf, ": ");
	escape_json(&buf, message);
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/*
 * Errors that say nothing about the change at hand (no disk, I/O, the server going away, a lock or
 * serialization conflict, a corrupt index): replacing the change for them would lose it, so the
 * batch fails and is retried. Running out of memory and internal errors ("invalid memory alloc
 * request size") can come from one huge change: for those the replacement is tried, and if it
 * fails too, the failure is systemic after all.
 */
static bool
SystemicError(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
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
			/* bemi.changes' one unique key is its generated id: a clash is never the change's
			 * fault (a restore that loaded ids the sequence had not reached yet), and retrying
			 * draws new ids. */
			return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE || sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
	}
}

/*
 * Inserts row i alone in a subtransaction. On failure it returns the error (copied into the
 * caller's context) with the subtransaction rolled back and the caller's state restored.
 */
static ErrorData *
TryInsertRow(Batch *b, int i, MemoryContext row_context)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(row_context);
	PG_TRY();
	{
		InsertRows(b, i, 1);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		failure = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	MemoryContextReset(row_context);
	return failure;
}

/*
 * Careful mode, after a batch failed: each change in its own subtransaction. A change that
 * cannot be written as it is gets recorded with its images replaced by the reason (and without
 * its primary key if that is still not enough), so one writer's change cannot stop everybody's
 * capture. A failure that even the replacement meets, or a systemic one, fails the batch: the
 * worker retries it with backoff and skips nothing. Returns how many changes were replaced;
 * *note describes the first.
 */
static int
InsertCarefully(Batch *b, char *note, size_t note_len)
{
	MemoryContext row_context = AllocSetContextCreate(CurrentMemoryContext, "bemi careful row",
													  ALLOCSET_DEFAULT_SIZES);
	int replaced = 0;

	for (int i = 0; i < b->count; i++)
	{
		ErrorData *first = TryInsertRow(b, i, row_context);
		ErrorData *again;
		char *schema;
		char *table;
		XLogRecPtr lsn;

		CHECK_FOR_INTERRUPTS();
		if (first == NULL)
			continue;
		if (SystemicError(first->sqlerrcode))
			ReThrowError(first);
		b->before[i] = b->after[i] = WriteErrorImage(first->message);
		again = TryInsertRow(b, i, row_context);
		if (again != NULL && !SystemicError(again->sqlerrcode))
		{
			/* The key itself is the problem (too big for the index, say). */
			b->pk_null[i] = true;
			b->pk[i] = (Datum) 0;
			FreeErrorData(again);
			again = TryInsertRow(b, i, row_context);
		}
		if (again != NULL)
		{
			FreeErrorData(again);
			ReThrowError(first);
		}
		schema = TextDatumGetCString(b->schema[i]);
		table = TextDatumGetCString(b->table[i]);
		lsn = DatumGetLSN(b->position[i]);
		ereport(WARNING,
				(errmsg("bemi: a %s of \"%s.%s\" at %X/%X is recorded without its images: %s",
						TextDatumGetCString(b->operation[i]), schema, table, LSN_FORMAT_ARGS(lsn), first->message),
				 errdetail("The change is recorded with \"%s\" in place of its images%s.",
						   BEMI_RESERVED_KEY "_write_error", b->pk_null[i] ? " and without its primary key" : ""),
				 errhint("Find it in bemi.changes with: before ? '%s'.", BEMI_RESERVED_KEY "_write_error")));
		if (replaced++ == 0)
			snprintf(note, note_len, "a change of \"%s.%s\" at %X/%X was recorded without its images: %s",
					 schema, table, LSN_FORMAT_ARGS(lsn), first->message);
		FreeErrorData(first);
	}
	MemoryContextDelete(row_context);
	return replaced;
}

/*
 * One transaction: the batch's rows and the progress they reach. The first batch after a failure
 * (db->failures > 0) is written carefully, row by row; a success returns to whole batches.
 */
static void
WriteBatch(BemiDatabase *db, Batch *b, const BemiProgress *reached, TimestampTz last_commit)
{
	Datum progress_args[3];
	int rc;
	bool careful = db->failures > 0;
	char note[BEMI_ERROR_LEN] = "";
	int replaced = 0;
	MemoryContext caller = CurrentMemoryContext; /* commit leaves us in TopMemoryContext */

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, careful ? "bemi: writing a batch of changes one by one after a failure"
										  : "bemi: writing a batch of changes");
	PreparePlans();

	if (b->count > 0 && careful)
		replaced = InsertCarefully(b, note, sizeof(note));
	else if (b->count > 0)
		InsertRows(b, 0, b->count);
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
	if (replaced > 0)
		BemiReportError(db, note); /* for bemi_status().last_error; the failure count resets below */
	SpinLockAcquire(&db->mutex);
	db->changes_written += b->count;
	if (last_commit)
		db->last_commit_at = last_commit;
	db->failures = 0;
	SpinLockRelease(&db->mutex);
	BemiRecovered(db);
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
					batch.table_oid[i] = ObjectIdGetDatum(entry.table_oid);
					batch.count++;
					/* Each array element is a copy: the context counts once per change. */
					batch.bytes += (Size) entry.before_len + entry.after_len + Max(entry.pk_len, 0) +
						VARSIZE(context) + entry.schema_len + entry.table_len;
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
