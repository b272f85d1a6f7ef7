/*
 * fn.h: the C++ core of bemi's SQL functions (the .cpp files of src/fn), as the C shims in src/fn/fn_shim.c
 * call it. Every function here enters C++ through bemi::Enter, so an error of any kind reaches
 * PostgreSQL as an ERROR raised after the C++ frames are gone. The shims read the arguments
 * (detoasting may raise, in C) and hand over plain values: NULL pointers for SQL NULLs.
 */
#ifndef BEMI_FN_H
#define BEMI_FN_H

#ifdef __cplusplus
extern "C" {
#endif

#include "postgres.h"

#include "access/tupdesc.h"
#include "access/xlogdefs.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* diff.cpp: what changed between two images, {"column": [old, new]}; NULL images read as {}. */
extern Jsonb *BemiDiff(Jsonb *before, Jsonb *after);

/*
 * readable.cpp: the read-permission rule of the trail.
 * BemiReadableTable: the (schema_name, table_name) row of a table the caller may read; raises
 * otherwise (relid NULL: the SQL NULL). BemiMayRead: may `reader` read a change of table `relid`
 * (InvalidOid: the change came with a restored dump, its table is found by schema and name)?
 * `cache` is the call site's fn_extra, kept in `cache_context`.
 */
extern Datum BemiReadableTable(const Oid *relid, TupleDesc row);
extern bool BemiMayRead(Oid reader, Oid relid, const char *schema, const char *table, void **cache,
						MemoryContext cache_context);

/*
 * jsonb_check.cpp: NULL if root..root+len is a jsonb document (its root container) as PostgreSQL
 * builds it, in the database's encoding; else what is wrong. Never raises, allocates nothing.
 */
extern const char *BemiJsonbProblem(const char *root, size_t len);

/*
 * ingest.cpp: rows a source sent (ingest_shim.c's order, row-major, checked) into bemi.changes by
 * the table-level batch insert; false, nothing written, where that does not apply (triggers, and
 * so on: then an INSERT). The caller has checked the rights.
 */
#define BEMI_INGEST_COLUMNS 14
extern bool BemiIngestWrite(int count, const Datum *values, const bool *nulls);

/* key.cpp: the primary-key text of a row image of table `relid`, as bemi.changes holds it. */
extern text *BemiKeyText(Oid relid, Jsonb *image);

/* status.cpp: wait for the worker to record everything before `lsn`; its shared-memory state. */
extern void BemiWaitApplied(XLogRecPtr lsn, int64 timeout_ms);
extern Datum BemiWorkerStateRow(TupleDesc row);

/*
 * destination.cpp: bemi_set_destination(conninfo) (NULL: the trail here) and whether the worker's
 * last attempt to write there worked (*known false: no attempt, or the trail is here).
 */
extern void BemiSetDestination(const char *conninfo);
extern bool BemiDestinationReachable(bool *known);

/*
 * src/chain/verify.cpp: bemi_verify's check of the hash chain over the changes committed in
 * [since, until]. out->found false: intact; else the first change that does not fit, why
 * ("altered", "removed", "inserted", "reordered") and a sentence (palloc'd).
 */
typedef struct BemiVerifyProblem
{
	bool		found;
	int64		id;
	const char *reason;
	char	   *detail;
} BemiVerifyProblem;
extern void BemiVerify(TimestampTz since, TimestampTz until, BemiVerifyProblem *out);

/* src/boundary/boundary_test.cpp: the test of both directions of the guard (sql/boundary.sql). */
extern text *BemiBoundaryTest(const char *kind, const char *function);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_FN_H */
