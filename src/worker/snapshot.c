/*
 * snapshot.c: snapshots of existing rows (bemi_snapshot). Runs in three places: the SQL function
 * bemi._snapshot_start (the caller's backend: checks, then starts a worker), one dynamic
 * background worker per job (reads the table, a chunk per transaction), and the database's worker
 * (BemiResumeSnapshots: starts the workers of unfinished jobs once its slot is consistent).
 *
 * Why a chunk is consistent with the change stream (docs/guarantees.md, "Snapshots"): a chunk
 * reads its rows with SELECT ... FOR SHARE in one transaction, which also writes the chunk's
 * message and the job's progress. A row the chunk returns is its latest committed version
 * (READ COMMITTED re-reads a row updated while the chunk waited for it) and no other transaction
 * can update or delete it until the chunk commits; so the images the message carries are the
 * rows' values exactly at the chunk's commit, which is where the output plugin puts the
 * SNAPSHOT changes in the stream. Every change of those rows committed before is earlier in the
 * trail, every later one later. A row the chunk does not see (inserted and not yet committed)
 * comes as its CREATE. The progress commits with the message: after a crash the job resumes
 * after the last committed chunk, nothing doubled, nothing skipped.
 *
 * Plain C: SPI, transactions, locks and signals, with no C++ object anywhere near them.
 */
#include "postgres.h"

#include "bemi/bemi.h"
#include "bemi/context_core.h"
#include "bemi/registry.h"
#include "bemi/secret.h"
#include "bemi/settings.h"
#include "bemi/snapshot.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "replication/message.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(bemi_snapshot_start);

/* What a job's worker is started with (bgw_extra). */
typedef struct SnapshotRequest
{
	Oid			dboid;
	int64		job;
	bool		create;			/* from bemi_snapshot: the worker records the job */
	Oid			relid;			/* create only */
	int32		chunk_size;		/* create only */
	Oid			requested_by;	/* create only */
} SnapshotRequest;

StaticAssertDecl(sizeof(SnapshotRequest) <= BGW_EXTRALEN, "a snapshot request fits in bgw_extra");

/* The advisory lock a job's worker holds for its life: one worker per job. */
#define SNAPSHOT_LOCK_FIELD4 0xbe31

#define MAX_CHUNK_SIZE 1000000

static void
StartTx(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
CommitTx(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
}

/*
 * What a snapshot can read, or an ERROR that says why not: a permanent table outside the system
 * schemas and bemi's (what bemi records), with a primary key of built-in types. The key's types
 * must be built in because the worker runs as a superuser and orders and compares by the key:
 * a comparison function an ordinary role wrote must never run with those rights
 * (docs/security.md). Fills keys with the key's attribute numbers; returns how many.
 */
static int
SnapshotKey(Relation rel, AttrNumber *keys)
{
	const char *name = RelationGetRelationName(rel);
	Oid			nsp = RelationGetNamespace(rel);
	const char *nspname = get_namespace_name(nsp);
	Oid			pk;
	Relation	index;
	int			n;

	if (rel->rd_rel->relkind != RELKIND_RELATION && rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("\"%s\" is not a table", name),
						errhint("bemi_snapshot records the rows of a table (or of a partitioned table as a whole).")));
	/* Its changes are recorded under the root: a snapshot of it alone would be a part of the root's. */
	if (rel->rd_rel->relispartition && bemi_partitions_as_root)
	{
		List	   *ancestors = get_partition_ancestors(RelationGetRelid(rel));
		Oid			root = ancestors != NIL ? llast_oid(ancestors) : InvalidOid;

		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
						errmsg("\"%s\" is a partition: bemi records its changes under \"%s\"", name,
							   OidIsValid(root) ? get_rel_name(root) : "its root"),
						errhint("Snapshot the partitioned table as a whole, or set bemi.partitions_as_root = off "
								"to record partitions under their own names.")));
	}
	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT || IsCatalogNamespace(nsp) ||
		IsToastNamespace(nsp) || nspname == NULL || strcmp(nspname, "bemi") == 0 ||
		strcmp(nspname, "information_schema") == 0)
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("bemi does not record table \"%s\"", name),
						errdetail("bemi records permanent tables outside the system schemas and its own."),
						errhint("Snapshot a table whose changes bemi records.")));
#if PG_VERSION_NUM >= 180000
	pk = RelationGetPrimaryKeyIndex(rel, false);
#else
	pk = RelationGetPrimaryKeyIndex(rel);
#endif
	if (!OidIsValid(pk))
		ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						errmsg("table \"%s\" has no primary key", name),
						errdetail("A snapshot reads a table in primary-key order, and time travel matches its rows by that key."),
						errhint("Add a primary key, then take the snapshot.")));
	index = index_open(pk, AccessShareLock);
	n = index->rd_index->indnkeyatts;
	for (int i = 0; i < n; i++)
	{
		Form_pg_attribute att;

		keys[i] = index->rd_index->indkey.values[i];
		att = TupleDescAttr(RelationGetDescr(rel), keys[i] - 1);
		if (att->atttypid >= FirstNormalObjectId)
			ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							errmsg("cannot snapshot table \"%s\": its primary key column \"%s\" has type %s, which is not built in",
								   name, NameStr(att->attname), format_type_be(att->atttypid)),
							errdetail("The snapshot worker runs as a superuser and compares keys; it runs only built-in comparisons."),
							errhint("Snapshot a table whose primary key has built-in types.")));
	}
	index_close(index, AccessShareLock);
	return n;
}

/* "ONLY schema.table t": a partitioned table is read whole, a table without its inheritors. */
static void
AppendFrom(StringInfo sql, Relation rel)
{
	appendStringInfo(sql, " FROM %s%s t", rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												RelationGetRelationName(rel)));
}

/* " WHERE (t.k1, t.k2) > ($1[1]::type1, $1[2]::type2)": after the last key reached. */
static void
AppendAfter(StringInfo sql, Relation rel, const AttrNumber *keys, int nkeys)
{
	TupleDesc	desc = RelationGetDescr(rel);

	appendStringInfoString(sql, nkeys > 1 ? " WHERE ROW(" : " WHERE (");
	for (int i = 0; i < nkeys; i++)
		appendStringInfo(sql, "%st.%s", i ? ", " : "",
						 quote_identifier(NameStr(TupleDescAttr(desc, keys[i] - 1)->attname)));
	appendStringInfoString(sql, nkeys > 1 ? ") > ROW(" : ") > (");
	for (int i = 0; i < nkeys; i++)
		appendStringInfo(sql, "%s$1[%d]::%s", i ? ", " : "", i + 1,
						 format_type_be(TupleDescAttr(desc, keys[i] - 1)->atttypid));
	appendStringInfoChar(sql, ')');
}

static void
AppendOrder(StringInfo sql, Relation rel, const AttrNumber *keys, int nkeys)
{
	TupleDesc	desc = RelationGetDescr(rel);

	appendStringInfoString(sql, " ORDER BY ");
	for (int i = 0; i < nkeys; i++)
		appendStringInfo(sql, "%st.%s", i ? ", " : "",
						 quote_identifier(NameStr(TupleDescAttr(desc, keys[i] - 1)->attname)));
}

static void
AppendUint32(StringInfo buf, uint32 value)
{
	appendBinaryStringInfo(buf, (const char *) &value, sizeof(value));
}

/*
 * The row an SPI result row holds (t.*: the live columns in order) as a tuple of rel's own
 * descriptor (dropped columns null), with out-of-line values inlined, appended to the message.
 */
static void
AppendRow(StringInfo message, Relation rel, HeapTuple row, TupleDesc row_desc)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc0(sizeof(bool) * desc->natts);
	int			column = 0;
	HeapTuple	tuple;

	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped)
		{
			nulls[a] = true;
			continue;
		}
		values[a] = SPI_getbinval(row, row_desc, ++column, &nulls[a]);
		if (!nulls[a] && att->attlen == -1 && VARATT_IS_EXTERNAL(DatumGetPointer(values[a])))
			values[a] = PointerGetDatum(detoast_external_attr((struct varlena *) DatumGetPointer(values[a])));
	}
	tuple = heap_form_tuple(desc, values, nulls);
	AppendUint32(message, tuple->t_len);
	appendBinaryStringInfo(message, (const char *) tuple->t_data, tuple->t_len);
	heap_freetuple(tuple);
	pfree(values);
	pfree(nulls);
}

/*
 * One chunk, in the current transaction: the next chunk_size rows after *last_key (NULL: from
 * the start), locked FOR SHARE, emitted as one signed message, and the job's progress updated.
 * Returns the rows read; *last_key is the new last key (in the caller's memory context).
 */
static uint64
RunChunk(int64 job, Relation rel, int32 chunk_size, ArrayType **last_key, MemoryContext keep)
{
	AttrNumber	keys[INDEX_MAX_KEYS];
	int			nkeys = SnapshotKey(rel, keys);
	TupleDesc	desc = RelationGetDescr(rel);
	int			live = 0;
	StringInfoData sql;
	StringInfoData message;
	Oid			types[3] = {TEXTARRAYOID, INT8OID, INT8OID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	uint64		n;
	int			key_columns[INDEX_MAX_KEYS];
	char	   *signed_message;
	int			signed_len;

	for (int a = 0; a < desc->natts; a++)
		live += TupleDescAttr(desc, a)->attisdropped ? 0 : 1;
	/* Each key attribute's column number in t.* (the live columns in order). */
	for (int i = 0; i < nkeys; i++)
	{
		key_columns[i] = 0;
		for (int a = 0; a < keys[i]; a++)
			key_columns[i] += TupleDescAttr(desc, a)->attisdropped ? 0 : 1;
	}

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT t.*");
	AppendFrom(&sql, rel);
	if (*last_key)
		AppendAfter(&sql, rel, keys, nkeys);
	AppendOrder(&sql, rel, keys, nkeys);
	appendStringInfo(&sql, " LIMIT %d FOR SHARE OF t", chunk_size);
	args[0] = *last_key ? PointerGetDatum(*last_key) : (Datum) 0;
	nulls[0] = *last_key ? ' ' : 'n';
	if (SPI_execute_with_args(sql.data, *last_key ? 1 : 0, types, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "bemi: the snapshot's chunk query failed: %s", sql.data);
	n = SPI_processed;
	if (n > 0 && SPI_tuptable->tupdesc->natts != live)
		elog(ERROR, "bemi: the snapshot's chunk has %d columns, table \"%s\" %d",
			 SPI_tuptable->tupdesc->natts, RelationGetRelationName(rel), live);
	if (n == 0)
		return 0;

	initStringInfo(&message);
	appendBinaryStringInfo(&message, BEMI_SNAPSHOT_MAGIC, BEMI_SNAPSHOT_MAGIC_LEN);
	AppendUint32(&message, RelationGetRelid(rel));
	AppendUint32(&message, (uint32) desc->natts);
	AppendUint32(&message, (uint32) n);
	for (uint64 i = 0; i < n; i++)
		AppendRow(&message, rel, SPI_tuptable->vals[i], SPI_tuptable->tupdesc);

	/* The last key reached, as text (built-in types: their output and input are exact). */
	{
		Datum		key_text[INDEX_MAX_KEYS];
		HeapTuple	last = SPI_tuptable->vals[n - 1];
		MemoryContext old;

		for (int i = 0; i < nkeys; i++)
		{
			char	   *value = SPI_getvalue(last, SPI_tuptable->tupdesc, key_columns[i]);

			if (value == NULL)
				elog(ERROR, "bemi: a primary key value of \"%s\" is NULL", RelationGetRelationName(rel));
			key_text[i] = CStringGetTextDatum(value);
		}
		old = MemoryContextSwitchTo(keep);
		*last_key = construct_array(key_text, nkeys, TEXTOID, -1, false, TYPALIGN_INT);
		MemoryContextSwitchTo(old);
	}

	/* Progress first: the write that gives the transaction its id (and its context message). */
	args[0] = PointerGetDatum(*last_key);
	nulls[0] = ' ';
	args[1] = Int64GetDatum((int64) n);
	args[2] = Int64GetDatum(job);
	if (SPI_execute_with_args("UPDATE bemi.snapshots SET last_key = $1, rows = rows + $2, updated_at = now() "
							  "WHERE id = $3",
							  3, types, args, nulls, false, 0) != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "bemi: could not record the progress of snapshot %lld", (long long) job);

	signed_message = BemiSignMessage(GetTopTransactionId(), message.data, message.len, &signed_len);
	if (signed_message == NULL)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("bemi has no secret on this server: a snapshot cannot be signed"),
						errhint("bemi must be in shared_preload_libraries.")));
#if PG_VERSION_NUM >= 170000
	LogLogicalMessage(BEMI_SNAPSHOT_PREFIX, signed_message, signed_len, true, false);
#else
	LogLogicalMessage(BEMI_SNAPSHOT_PREFIX, signed_message, signed_len, true);
#endif
	pfree(signed_message);
	pfree(message.data);
	pfree(sql.data);
	return n;
}

/* Is there a row after *last_key? (A chunk can come back empty when every row it locked was deleted meanwhile.) */
static bool
RowsRemain(Relation rel, ArrayType *last_key)
{
	AttrNumber	keys[INDEX_MAX_KEYS];
	int			nkeys = SnapshotKey(rel, keys);
	StringInfoData sql;
	Oid			types[1] = {TEXTARRAYOID};
	Datum		args[1] = {PointerGetDatum(last_key)};

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT 1");
	AppendFrom(&sql, rel);
	if (last_key)
		AppendAfter(&sql, rel, keys, nkeys);
	appendStringInfoString(&sql, " LIMIT 1");
	if (SPI_execute_with_args(sql.data, last_key ? 1 : 0, types, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "bemi: the snapshot's last query failed: %s", sql.data);
	return SPI_processed > 0;
}

/* One worker per job: the advisory lock of the job, for the worker's life. */
static bool
TakeJob(int64 job)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) ((uint64) job >> 32), (uint32) job, SNAPSHOT_LOCK_FIELD4);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

static bool
TableExists(Oid relid)
{
	return SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid));
}

/*
 * DROP DATABASE (or DROP EXTENSION) asked the database's worker to let go: a job's worker lets go
 * too, between chunks, or DROP DATABASE would find it connected and fail. The job stays unfinished
 * and resumes after the last committed chunk when capture starts again.
 */
static bool
CaptureLettingGo(Oid dboid)
{
	BemiDatabase *db = BemiFindDatabase(dboid);
	bool		letting_go;

	if (db == NULL)
		return false;
	LWLockAcquire(bemi_shared->lock, LW_SHARED);
	letting_go = db->dboid == dboid && (db->state == BEMI_PAUSED || db->state == BEMI_STOPPING);
	LWLockRelease(bemi_shared->lock);
	return letting_go;
}

/*
 * The job: recorded (a new one) or loaded (a resumed one), then chunk after chunk, each in its own
 * transaction, then done. False when there is nothing to do (the job is finished, or its new
 * table went away with the transaction that made it).
 */
static void
RunJob(const SnapshotRequest *req, MemoryContext keep)
{
	Oid			relid = req->relid;
	int32		chunk_size = req->chunk_size;
	ArrayType  *last_key = NULL;
	uint64		total = 0;
	bool		done = false;

	StartTx();
	if (req->create)
	{
		Oid			types[6] = {INT8OID, OIDOID, TEXTOID, TEXTOID, INT4OID, TEXTOID};
		Datum		args[6];
		const char *role = GetUserNameFromId(req->requested_by, true);

		/* A table made by the transaction that asked is seen once that transaction commits. */
		LockRelationOid(relid, AccessShareLock);
		if (!TableExists(relid))
		{
			ereport(LOG, (errmsg("bemi: snapshot %lld not taken: table %u no longer exists", (long long) req->job, relid)));
			CommitTx();
			return;
		}
		args[0] = Int64GetDatum(req->job);
		args[1] = ObjectIdGetDatum(relid);
		args[2] = CStringGetTextDatum(get_namespace_name(get_rel_namespace(relid)));
		args[3] = CStringGetTextDatum(get_rel_name(relid));
		args[4] = Int32GetDatum(chunk_size);
		args[5] = CStringGetTextDatum(role ? role : "");
		if (SPI_execute_with_args("INSERT INTO bemi.snapshots (id, table_oid, schema, \"table\", state, chunk_size, requested_by) "
								  "VALUES ($1, $2, $3, $4, 'running', $5, $6)",
								  6, types, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "bemi: could not record snapshot %lld", (long long) req->job);
	}
	else
	{
		Oid			types[1] = {INT8OID};
		Datum		args[1] = {Int64GetDatum(req->job)};
		bool		isnull;
		char	   *state;
		Datum		key;

		if (SPI_execute_with_args("SELECT table_oid, chunk_size, last_key, rows, state FROM bemi.snapshots WHERE id = $1",
								  1, types, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "bemi: could not read snapshot %lld", (long long) req->job);
		if (SPI_processed == 0)
		{
			CommitTx();
			return;
		}
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
		if (strcmp(state, "pending") != 0 && strcmp(state, "running") != 0)
		{
			CommitTx();
			return;
		}
		relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		chunk_size = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		key = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(keep);

			last_key = DatumGetArrayTypePCopy(key);
			MemoryContextSwitchTo(old);
		}
		total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		if (SPI_execute_with_args("UPDATE bemi.snapshots SET state = 'running', updated_at = now() WHERE id = $1",
								  1, types, args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "bemi: could not start snapshot %lld", (long long) req->job);
		ereport(LOG, (errmsg("bemi: snapshot %lld of table %u %s after %lld rows", (long long) req->job, relid,
							 strcmp(state, "pending") == 0 ? "starting" : "resuming", (long long) total)));
	}
	CommitTx();

	while (!done)
	{
		Relation	rel;
		uint64		n;

		CHECK_FOR_INTERRUPTS();
		if (CaptureLettingGo(req->dboid))
		{
			ereport(LOG, (errmsg("bemi: snapshot %lld of table %u stops after %lld rows: capture is letting go of the database",
								 (long long) req->job, relid, (long long) total)));
			return;
		}
		StartTx();
		rel = try_relation_open(relid, AccessShareLock);
		if (rel == NULL)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
							errmsg("table %u was dropped during its snapshot", relid)));
		pgstat_report_activity(STATE_RUNNING, "bemi: snapshot chunk");
		n = RunChunk(req->job, rel, chunk_size, &last_key, keep);
		total += n;
		if (n == 0 && !RowsRemain(rel, last_key))
		{
			Oid			types[1] = {INT8OID};
			Datum		args[1] = {Int64GetDatum(req->job)};

			if (SPI_execute_with_args("UPDATE bemi.snapshots SET state = 'done', finished_at = now(), updated_at = now() "
									  "WHERE id = $1",
									  1, types, args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "bemi: could not finish snapshot %lld", (long long) req->job);
			done = true;
		}
		relation_close(rel, AccessShareLock);
		CommitTx();
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	ereport(LOG, (errmsg("bemi: snapshot %lld of table %u done: %lld rows", (long long) req->job, relid,
						 (long long) total)));
}

/* A job that failed with an ERROR is marked failed with the reason; it is not resumed. */
static void
RecordFailure(int64 job, const char *reason)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		args[2] = {Int64GetDatum(job), CStringGetTextDatum(reason)};

	StartTx();
	if (SPI_execute_with_args("UPDATE bemi.snapshots SET state = 'failed', error = $2, finished_at = now(), "
							  "updated_at = now() WHERE id = $1 AND state IN ('pending', 'running')",
							  2, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "bemi: could not record the failure of snapshot %lld", (long long) job);
	CommitTx();
}

void
bemi_snapshot_main(Datum arg)
{
	SnapshotRequest req;
	MemoryContext keep;
	char		context[64];

	memcpy(&req, MyBgworkerEntry->bgw_extra, sizeof(req));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(req.dboid, InvalidOid, 0);
	pgstat_report_appname("bemi snapshot");
	SetConfigOption("application_name", "bemi snapshot", PGC_USERSET, PGC_S_OVERRIDE);
	/* A superuser's statements: names only in pg_catalog (docs/security.md), no server timeouts. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	/* The last key is kept as text: one fixed style for it. */
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("IntervalStyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("extra_float_digits", "3", PGC_SUSET, PGC_S_OVERRIDE);

	keep = AllocSetContextCreate(TopMemoryContext, "bemi snapshot", ALLOCSET_DEFAULT_SIZES);
	StartTx();
	if (!TakeJob(req.job))
	{
		CommitTx();
		ereport(LOG, (errmsg("bemi: snapshot %lld is being taken by another worker", (long long) req.job)));
		proc_exit(0);
	}
	/* The changes it records say which job wrote them (with the server's identity of the writer). */
	snprintf(context, sizeof(context), "{\"bemi_snapshot\": %lld}", (long long) req.job);
	BemiSetContext(DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(context))), false);
	CommitTx();

	PG_TRY();
	{
		RunJob(&req, keep);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(keep);
		error = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		ereport(WARNING, (errmsg("bemi: snapshot %lld failed: %s", (long long) req.job, error->message)));
		RecordFailure(req.job, error->message);
	}
	PG_END_TRY();
	proc_exit(0);
}

/* Starts a job's worker; false when no background worker slot is free. */
static bool
StartWorker(const SnapshotRequest *req, bool notify, BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_notify_pid = notify ? MyProcPid : 0;
	memcpy(worker.bgw_extra, req, sizeof(*req));
	strlcpy(worker.bgw_library_name, "bemi", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "bemi_snapshot_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "bemi snapshot %lld for database %u", (long long) req->job, req->dboid);
	strlcpy(worker.bgw_type, "bemi snapshot", BGW_MAXLEN);
	return RegisterDynamicBackgroundWorker(&worker, handle);
}

/*
 * bemi._snapshot_start(tbl regclass, wait boolean, chunk_size integer) → bigint: checks the
 * caller and the table, starts the job's worker, and with wait returns once the worker has exited.
 */
Datum
bemi_snapshot_start(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	bool		wait = PG_GETARG_BOOL(1);
	int32		chunk_size = PG_GETARG_INT32(2);
	Oid			admin = get_role_oid("bemi_admin", true);
	AttrNumber	keys[INDEX_MAX_KEYS];
	Relation	rel;
	SnapshotRequest req;
	BackgroundWorkerHandle *handle = NULL;
	Oid			seq;

	if (!superuser() && !(OidIsValid(admin) && has_privs_of_role(GetUserId(), admin)))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied for bemi_snapshot"),
						errdetail("Snapshots are taken by superusers and members of bemi_admin."),
						errhint("Ask a superuser to GRANT bemi_admin to you.")));
	if (chunk_size < 1 || chunk_size > MAX_CHUNK_SIZE)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("chunk_size must be between 1 and %d, not %d", MAX_CHUNK_SIZE, chunk_size)));
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("relation with OID %u does not exist", relid)));
	/* The trail will hold every row: only for a role that may read every row. */
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied for table %s", RelationGetRelationName(rel)),
						errdetail("A snapshot records every row of the table; it needs SELECT on it.")));
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("row-level security hides rows of table %s from you", RelationGetRelationName(rel)),
						errdetail("A snapshot records every row of the table, whatever row-level security would show."),
						errhint("A superuser, the table's owner or a role with BYPASSRLS takes the snapshot.")));
	(void) SnapshotKey(rel, keys);
	if (wait && TransactionIdIsValid(GetTopTransactionIdIfAny()))
		ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
						errmsg("bemi_snapshot cannot wait inside a transaction that has written"),
						errdetail("The snapshot's worker may need the locks this transaction holds, while it waits for the worker."),
						errhint("Commit first, or pass wait => false: the snapshot then reads what this transaction commits.")));
	/* LOCK TABLE takes no transaction id, and the worker's FOR SHARE would wait for it just the same. */
	if (wait && CheckRelationLockedByMe(rel, ExclusiveLock, true))
		ereport(ERROR, (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
						errmsg("bemi_snapshot cannot wait while this transaction holds a lock on table %s that its worker needs",
							   RelationGetRelationName(rel)),
						errdetail("The worker reads the table FOR SHARE, which waits for an EXCLUSIVE or ACCESS EXCLUSIVE lock."),
						errhint("Commit first, or pass wait => false.")));
	if (wait && IsolationUsesXactSnapshot())
		ereport(ERROR, (errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
						errmsg("bemi_snapshot cannot wait in a REPEATABLE READ or SERIALIZABLE transaction"),
						errdetail("It would not see the outcome its worker commits."),
						errhint("Call it in READ COMMITTED, or pass wait => false.")));

	/* One unfinished job per table (the unique index says so too, later and less clearly). */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	{
		Oid			types[1] = {OIDOID};
		Datum		args[1] = {ObjectIdGetDatum(relid)};

		if (SPI_execute_with_args("SELECT id FROM bemi.snapshots WHERE table_oid = $1 AND state IN ('pending', 'running')",
								  1, types, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "bemi: could not read bemi.snapshots");
		if (SPI_processed > 0)
			ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							errmsg("a snapshot of table %s is already under way", RelationGetRelationName(rel)),
							errdetail("Job %s in bemi.snapshots.", SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
							errhint("Wait for it to finish.")));
	}
	SPI_finish();

	seq = get_relname_relid("snapshots_id_seq", get_namespace_oid("bemi", false));
	if (!OidIsValid(seq))
		elog(ERROR, "bemi: sequence bemi.snapshots_id_seq is missing");
	memset(&req, 0, sizeof(req));
	req.dboid = MyDatabaseId;
	req.job = nextval_internal(seq, false);
	req.create = true;
	req.relid = relid;
	req.chunk_size = chunk_size;
	req.requested_by = GetUserId();
	relation_close(rel, AccessShareLock);
	if (!StartWorker(&req, true, &handle))
		ereport(ERROR, (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						errmsg("no background worker slot is free for the snapshot"),
						errhint("Raise max_worker_processes, or try again later.")));
	if (wait && WaitForBackgroundWorkerShutdown(handle) == BGWH_POSTMASTER_DIED)
		ereport(ERROR, (errcode(ERRCODE_ADMIN_SHUTDOWN), errmsg("the server stopped during the snapshot")));
	PG_RETURN_INT64(req.job);
}

void
BemiResumeSnapshots(Oid dboid)
{
	MemoryContext caller = CurrentMemoryContext;
	int64	   *jobs = NULL;
	uint64		njobs = 0;
	Oid			nsp;

	StartTx();
	nsp = get_namespace_oid("bemi", true);
	/* A database whose SQL is older than 0.5.0 has no bemi.snapshots. */
	if (OidIsValid(nsp) && OidIsValid(get_relname_relid("snapshots", nsp)))
	{
		if (SPI_execute("SELECT id FROM bemi.snapshots WHERE state IN ('pending', 'running') ORDER BY id", true, 0) !=
			SPI_OK_SELECT)
			elog(ERROR, "bemi: could not read bemi.snapshots");
		njobs = SPI_processed;
		jobs = MemoryContextAlloc(caller, sizeof(int64) * Max(njobs, 1));
		for (uint64 i = 0; i < njobs; i++)
		{
			bool		isnull;

			jobs[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		}
	}
	CommitTx();
	MemoryContextSwitchTo(caller);
	for (uint64 i = 0; i < njobs; i++)
	{
		SnapshotRequest req;
		BackgroundWorkerHandle *handle;

		memset(&req, 0, sizeof(req));
		req.dboid = dboid;
		req.job = jobs[i];
		if (!StartWorker(&req, false, &handle))
			ereport(WARNING, (errmsg("bemi: no background worker slot is free to resume snapshot %lld", (long long) jobs[i]),
							  errhint("Raise max_worker_processes; the snapshot resumes when the worker starts again.")));
	}
	if (jobs)
		pfree(jobs);
}
