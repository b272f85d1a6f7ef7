/*
 * fn_shim.c: the SQL-callable entry points of src/fn (and the tests' own), in C. Each reads
 * its arguments, hands plain values to the C++ core (fn.h) and returns its answer: nothing else
 * happens here. Runs in the backend of whoever calls the SQL function.
 */
#include "postgres.h"

#include "fn.h"

#include "bemi/hmac.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(bemi_diff);
PG_FUNCTION_INFO_V1(bemi_readable_table);
PG_FUNCTION_INFO_V1(bemi_may_read);
PG_FUNCTION_INFO_V1(bemi_caller);
PG_FUNCTION_INFO_V1(bemi_key_text);
PG_FUNCTION_INFO_V1(bemi_wait);
PG_FUNCTION_INFO_V1(bemi_worker_state);
PG_FUNCTION_INFO_V1(bemi_boundary_test);
PG_FUNCTION_INFO_V1(bemi_sha256_test);
PG_FUNCTION_INFO_V1(bemi_set_destination);
PG_FUNCTION_INFO_V1(bemi_destination_reachable);
PG_FUNCTION_INFO_V1(bemi_verify);

/* The row type a function returning a composite was declared with. */
static TupleDesc
ResultRow(FunctionCallInfo fcinfo)
{
	TupleDesc desc;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	return BlessTupleDesc(desc);
}

/* bemi_diff(before jsonb, after jsonb) → jsonb (not STRICT: NULL reads as {}). */
Datum
bemi_diff(PG_FUNCTION_ARGS)
{
	Jsonb *before = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	Jsonb *after = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);

	PG_RETURN_JSONB_P(BemiDiff(before, after));
}

/* bemi._readable_table(tbl regclass, OUT schema_name text, OUT table_name text). */
Datum
bemi_readable_table(PG_FUNCTION_ARGS)
{
	Oid relid = PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0);

	PG_RETURN_DATUM(BemiReadableTable(PG_ARGISNULL(0) ? NULL : &relid, ResultRow(fcinfo)));
}

/* bemi._may_read(reader oid, table_oid oid, schema text, table text) → boolean. */
Datum
bemi_may_read(PG_FUNCTION_ARGS)
{
	bool by_name = PG_ARGISNULL(1);

	if (PG_ARGISNULL(0) || (by_name && (PG_ARGISNULL(2) || PG_ARGISNULL(3))))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(BemiMayRead(PG_GETARG_OID(0), by_name ? InvalidOid : PG_GETARG_OID(1),
							   by_name ? text_to_cstring(PG_GETARG_TEXT_PP(2)) : NULL,
							   by_name ? text_to_cstring(PG_GETARG_TEXT_PP(3)) : NULL,
							   &fcinfo->flinfo->fn_extra, fcinfo->flinfo->fn_mcxt));
}

/* bemi._caller() → oid: the role running the query, as public functions pass it to the readers. */
Datum
bemi_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(GetUserId());
}

/* bemi_primary_key(tbl regclass, image jsonb) → text (STRICT). */
Datum
bemi_key_text(PG_FUNCTION_ARGS)
{
	text *key = BemiKeyText(PG_GETARG_OID(0), PG_GETARG_JSONB_P(1));

	if (key == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(key);
}

/* bemi_wait(lsn pg_lsn, timeout interval) → boolean (STRICT): true, or an ERROR. */
Datum
bemi_wait(PG_FUNCTION_ARGS)
{
	Interval *timeout = PG_GETARG_INTERVAL_P(1);
	int64 timeout_ms = (timeout->time + (int64) (timeout->day) * USECS_PER_DAY +
						(int64) timeout->month * DAYS_PER_MONTH * USECS_PER_DAY) / 1000;

	BemiWaitApplied(PG_GETARG_LSN(0), timeout_ms);
	PG_RETURN_BOOL(true);
}

/* bemi._worker_state(): the shared-memory view of this database's worker, for bemi_status(). */
Datum
bemi_worker_state(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(BemiWorkerStateRow(ResultRow(fcinfo)));
}

/* bemi_set_destination(conninfo text) → void (not STRICT: NULL keeps the trail here). */
Datum
bemi_set_destination(PG_FUNCTION_ARGS)
{
	BemiSetDestination(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* bemi._destination_reachable() → boolean: NULL before the worker's first attempt there. */
Datum
bemi_destination_reachable(PG_FUNCTION_ARGS)
{
	bool known;
	bool reachable = BemiDestinationReachable(&known);

	if (!known)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(reachable);
}

/*
 * bemi_boundary_test(kind text) → text: the test entry of the C++/PostgreSQL boundary. No install
 * script creates it; sql/boundary.sql declares it for itself. It passes its own qualified name
 * so that the nested cases can call it again through SPI.
 */
Datum
bemi_boundary_test(PG_FUNCTION_ARGS)
{
	Oid fn = fcinfo->flinfo->fn_oid;
	const char *function = quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)), get_func_name(fn));

	PG_RETURN_TEXT_P(BemiBoundaryTest(text_to_cstring(PG_GETARG_TEXT_PP(0)), function));
}

/*
 * bemi_sha256_test(data bytea, portable boolean) → bytea: SHA-256 as bemi's MACs compute it, by the
 * portable code or by the CPU's SHA instructions (NULL if it has none). Installed in no database:
 * sql/hmac.sql declares it and compares both with sha256().
 */
Datum
bemi_sha256_test(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	bytea	   *digest = (bytea *) palloc(VARHDRSZ + BEMI_HMAC_LEN);

	SET_VARSIZE(digest, VARHDRSZ + BEMI_HMAC_LEN);
	if (!BemiSha256((const uint8_t *) VARDATA_ANY(data), VARSIZE_ANY_EXHDR(data), PG_GETARG_BOOL(1),
					(uint8_t *) VARDATA(digest)))
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(digest);
}

/*
 * bemi_verify(since timestamptz, until timestamptz) → TABLE(id bigint, reason text, detail text)
 * : no row when the chain over the changes committed in [since, until] is intact, else the first
 * change that does not fit. Not STRICT: "no row" must never stand for a range that checked
 * nothing, so a NULL or an empty range is an error.
 */
Datum
bemi_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BemiVerifyProblem problem;
	TimestampTz since;
	TimestampTz until;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("bemi_verify needs a since and an until, not NULL"),
						errhint("'-infinity' and 'infinity' check the whole trail.")));
	since = PG_GETARG_TIMESTAMPTZ(0);
	until = PG_GETARG_TIMESTAMPTZ(1);
	if (since > until)
	{
		/* timestamptz_to_str returns a static buffer: one copy each. */
		char	   *since_text = pstrdup(timestamptz_to_str(since));
		char	   *until_text = pstrdup(timestamptz_to_str(until));

		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						errmsg("bemi_verify: since (%s) is after until (%s)", since_text, until_text)));
	}
	InitMaterializedSRF(fcinfo, 0);
	BemiVerify(since, until, &problem);
	if (problem.found)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = Int64GetDatum(problem.id);
		values[1] = CStringGetTextDatum(problem.reason);
		values[2] = CStringGetTextDatum(problem.detail);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
