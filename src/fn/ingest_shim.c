/*
 * ingest_shim.c: bemi._ingest(batch bytea) and bemi._ingest_rows(batch bytea), on a destination:
 * the rows of a batch a source's worker sends (src/worker/remote.cpp), in COPY's binary format but
 * with each jsonb in PostgreSQL's own format rather than as text, so that the destination does not
 * parse JSON. The worker calls bemi._ingest, which writes the rows itself by the table-level batch
 * insert (src/fn/ingest.cpp) after the checks an INSERT and the trail's protection would make, or
 * where that does not apply runs INSERT INTO bemi.changes (...) SELECT * FROM bemi._ingest_rows($1),
 * whose executor checks everything as for any INSERT. Runs as the caller, a role with bemi_ingest
 * only: nothing it sends is trusted. Every length is checked against what was sent, text against
 * the database's encoding, times against their range, and every jsonb by BemiJsonbProblem
 * (jsonb_check.cpp) before a value is used; anything else is an error naming the row and the
 * column. C-style: PostgreSQL's errors leave as they are raised, and nothing here owns a destructor.
 */
#include "postgres.h"

#include "fn.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "mb/pg_wchar.h"
#include "port/pg_bswap.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(bemi_ingest);
PG_FUNCTION_INFO_V1(bemi_ingest_rows);
PG_FUNCTION_INFO_V1(bemi_jsonb_internal);

/* The columns, in the order the worker writes them (remote.cpp's kIngest). */
typedef enum IngestType
{
	INGEST_INT8,
	INGEST_TEXT,
	INGEST_JSONB,
	INGEST_TIMESTAMPTZ,
	INGEST_LSN
} IngestType;

static const IngestType ingest_columns[] = {
	INGEST_INT8,				/* id */
	INGEST_TEXT,				/* primary_key */
	INGEST_JSONB,				/* before */
	INGEST_JSONB,				/* after */
	INGEST_JSONB,				/* context */
	INGEST_TEXT,				/* database */
	INGEST_TEXT,				/* schema */
	INGEST_TEXT,				/* table */
	INGEST_TEXT,				/* operation */
	INGEST_TIMESTAMPTZ,			/* committed_at */
	INGEST_INT8,				/* transaction_id */
	INGEST_LSN,					/* position */
	INGEST_TEXT,				/* source_system_id */
	INGEST_TIMESTAMPTZ,			/* created_at */
};

#define INGEST_NCOLUMNS lengthof(ingest_columns)
StaticAssertDecl(INGEST_NCOLUMNS == BEMI_INGEST_COLUMNS, "the batch's columns, as read and as written");

static const char ingest_signature[] = "PGCOPY\n\377\r\n\0";

typedef struct IngestReader
{
	const char *data;
	size_t		len;
	size_t		at;
	int64		row;			/* 1-based, for errors */
} IngestReader;

static void
IngestRefuse(const IngestReader *r, const char *what)
{
	ereport(ERROR, (errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					errmsg("bemi: a batch sent to the trail is refused: %s", what),
					r->row > 0 ? errdetail("In row %lld of the batch.", (long long) r->row) : 0));
}

static const char *
IngestTake(IngestReader *r, size_t n)
{
	const char *p;

	if (n > r->len - r->at)
		IngestRefuse(r, "it is cut short");
	p = r->data + r->at;
	r->at += n;
	return p;
}

static uint32
IngestUint32(IngestReader *r)
{
	uint32		v;

	memcpy(&v, IngestTake(r, sizeof(v)), sizeof(v));
	return pg_ntoh32(v);
}

static uint16
IngestUint16(IngestReader *r)
{
	uint16		v;

	memcpy(&v, IngestTake(r, sizeof(v)), sizeof(v));
	return pg_ntoh16(v);
}

static int64
IngestInt64(IngestReader *r, const char *p, int32 len)
{
	uint64		v;

	if (len != sizeof(v))
		IngestRefuse(r, "an 8-byte value has another length");
	memcpy(&v, p, sizeof(v));
	return (int64) pg_ntoh64(v);
}

static Datum
IngestValue(IngestReader *r, IngestType type, const char *p, int32 len)
{
	switch (type)
	{
		case INGEST_INT8:
			return Int64GetDatum(IngestInt64(r, p, len));
		case INGEST_LSN:
			return LSNGetDatum((XLogRecPtr) IngestInt64(r, p, len));
		case INGEST_TIMESTAMPTZ:
			{
				TimestampTz t = IngestInt64(r, p, len);

				/* timestamptz_recv's check */
				if (!TIMESTAMP_NOT_FINITE(t) && !IS_VALID_TIMESTAMP(t))
					IngestRefuse(r, "a time is out of range");
				return TimestampTzGetDatum(t);
			}
		case INGEST_TEXT:
			/* raises on a byte sequence invalid in the database's encoding, NUL included */
			(void) pg_verify_mbstr(GetDatabaseEncoding(), p, len, false);
			return PointerGetDatum(cstring_to_text_with_len(p, len));
		case INGEST_JSONB:
			{
				const char *problem = BemiJsonbProblem(p, (size_t) len);
				Jsonb	   *jb;

				if (problem != NULL)
					IngestRefuse(r, problem);
				jb = (Jsonb *) palloc(VARHDRSZ + len);
				SET_VARSIZE(jb, VARHDRSZ + len);
				memcpy(VARDATA(jb), p, len);
				return JsonbPGetDatum(jb);
			}
	}
	pg_unreachable();
}

/*
 * The format: COPY's binary header (no flags, no extension), then per row its field count and
 * each field's length (-1: NULL) and bytes, integers in network order, jsonb as its varlena's
 * data; the trailer (-1) ends it, and nothing may follow.
 */
static void
IngestBegin(IngestReader *r)
{
	if (memcmp(IngestTake(r, sizeof(ingest_signature) - 1), ingest_signature, sizeof(ingest_signature) - 1) != 0)
		IngestRefuse(r, "it does not start with COPY's binary signature");
	if (IngestUint32(r) != 0 || IngestUint32(r) != 0)
		IngestRefuse(r, "its header has flags or an extension");
}

/* The next row's values (allocated in the current memory context); false at the trailer. */
static bool
IngestNextRow(IngestReader *r, Datum *values, bool *nulls)
{
	int16		fields = (int16) IngestUint16(r);

	if (fields == -1)
	{
		r->row = 0;
		if (r->at != r->len)
			IngestRefuse(r, "it has data past its trailer");
		return false;
	}
	r->row++;
	if (fields != (int16) INGEST_NCOLUMNS)
		IngestRefuse(r, "a row has another number of columns");
	for (int i = 0; i < (int) INGEST_NCOLUMNS; i++)
	{
		int32		len = (int32) IngestUint32(r);

		nulls[i] = len == -1;
		values[i] = (Datum) 0;
		if (nulls[i])
			continue;
		if (len < 0)
			IngestRefuse(r, "a column has a negative length");
		values[i] = IngestValue(r, ingest_columns[i], IngestTake(r, len), len);
	}
	return true;
}

/*
 * bemi._ingest_rows(batch bytea) → SETOF (the bemi.changes columns the worker writes, in its
 * order): the rows of a batch, for an INSERT ... SELECT (bemi._ingest's way where its own does
 * not apply).
 */
Datum
bemi_ingest_rows(PG_FUNCTION_ARGS)
{
	bytea	   *batch = PG_GETARG_BYTEA_PP(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	IngestReader r = {VARDATA_ANY(batch), VARSIZE_ANY_EXHDR(batch), 0, 0};
	MemoryContext row_context;
	MemoryContext caller;
	Datum		values[INGEST_NCOLUMNS];
	bool		nulls[INGEST_NCOLUMNS];

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != (int) INGEST_NCOLUMNS)
		elog(ERROR, "bemi._ingest_rows: declared with %d columns, not %d", rsinfo->setDesc->natts,
			 (int) INGEST_NCOLUMNS);
	IngestBegin(&r);
	row_context = AllocSetContextCreate(CurrentMemoryContext, "bemi ingest row", ALLOCSET_DEFAULT_SIZES);
	caller = MemoryContextSwitchTo(row_context);
	while (IngestNextRow(&r, values, nulls))
	{
		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(caller);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		MemoryContextReset(row_context);
		MemoryContextSwitchTo(row_context);
	}
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(row_context);
	return (Datum) 0;
}

/* The rows by INSERT ... SELECT FROM bemi._ingest_rows: the executor fires and checks everything. */
static int64
IngestByInsert(Datum batch)
{
	Oid			types[1] = {BYTEAOID};
	Datum		args[1] = {batch};
	int64		written;

	SPI_connect();
	if (SPI_execute_with_args("INSERT INTO bemi.changes (id, primary_key, \"before\", \"after\", context, database,"
							  " schema, \"table\", operation, committed_at, transaction_id, position, source_system_id,"
							  " created_at) OVERRIDING SYSTEM VALUE SELECT * FROM bemi._ingest_rows($1)",
							  1, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "bemi._ingest: the INSERT into bemi.changes failed");
	written = (int64) SPI_processed;
	SPI_finish();
	return written;
}

/*
 * bemi._ingest(batch bytea) → bigint, the rows written: a batch of a source's worker (the format
 * above) appended to bemi.changes. Only a role granted bemi_ingest, as the trail's protection
 * lets it append (protect.cpp), and with the rights an INSERT takes. Where the rows may go by
 * the table-level batch insert (no triggers, no row level security, and no Citus, which routes
 * writes through its own executor), they do: one WAL record per page of rows rather than one per
 * row, no tuplestore, no plan. Else by INSERT ... SELECT FROM bemi._ingest_rows.
 */
Datum
bemi_ingest(PG_FUNCTION_ARGS)
{
	Datum		arg = PG_GETARG_DATUM(0);
	bytea	   *batch = PG_GETARG_BYTEA_PP(0);
	Oid			ingest = get_role_oid("bemi_ingest", true);
	Oid			schema = get_namespace_oid("bemi", true);
	Oid			relid = OidIsValid(schema) ? get_relname_relid("changes", schema) : InvalidOid;
	IngestReader r = {VARDATA_ANY(batch), VARSIZE_ANY_EXHDR(batch), 0, 0};
	int			capacity = 256;
	int			count = 0;
	Datum	   *values;
	bool	   *nulls;

	if (!OidIsValid(ingest) || !is_member_of_role_nosuper(GetUserId(), ingest))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("bemi: only a role granted bemi_ingest appends a source's batch to the trail")));
	/* called in a SELECT: the executor's own check for a write is not made */
	PreventCommandIfReadOnly("bemi._ingest()");
	if (!OidIsValid(relid) || pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK ||
		check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED ||
		OidIsValid(get_extension_oid("citus", true)))
		PG_RETURN_INT64(IngestByInsert(arg));
	values = palloc(sizeof(Datum) * INGEST_NCOLUMNS * capacity);
	nulls = palloc(sizeof(bool) * INGEST_NCOLUMNS * capacity);
	IngestBegin(&r);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (count == capacity)
		{
			capacity *= 2;
			values = repalloc_huge(values, sizeof(Datum) * INGEST_NCOLUMNS * capacity);
			nulls = repalloc_huge(nulls, sizeof(bool) * INGEST_NCOLUMNS * capacity);
		}
		if (!IngestNextRow(&r, values + (size_t) count * INGEST_NCOLUMNS, nulls + (size_t) count * INGEST_NCOLUMNS))
			break;
		count++;
	}
	if (BemiIngestWrite(count, values, nulls))
		PG_RETURN_INT64(count);
	PG_RETURN_INT64(IngestByInsert(arg));
}

/*
 * bemi._jsonb_internal(jsonb) → bytea: the document in PostgreSQL's own format, as
 * bemi._ingest_rows takes it (for tests: sql/ingest.sql builds batches with it).
 */
Datum
bemi_jsonb_internal(PG_FUNCTION_ARGS)
{
	Jsonb	   *jb = PG_GETARG_JSONB_P(0);
	Size		len = VARSIZE(jb) - VARHDRSZ;
	bytea	   *out = (bytea *) palloc(VARHDRSZ + len);

	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(VARDATA(out), VARDATA(jb), len);
	PG_RETURN_BYTEA_P(out);
}
