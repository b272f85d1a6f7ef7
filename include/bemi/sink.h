/*
 * sink.h: the contract between the output plugin (src/decoding) and the worker's sink
 * (src/worker). Inside the worker the plugin hands each transaction's context and changes to the
 * sink instead of writing them to an output stream.
 */
#ifndef BEMI_SINK_H
#define BEMI_SINK_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct BemiChange
{
	Oid table_oid;     /* the recorded table: the root of a partition recorded under its root */
	const char *schema;
	const char *table;
	const char *operation;
	text *primary_key; /* NULL when the table has no primary key */
	Jsonb *before;
	Jsonb *after;
} BemiChange;

/* True while the worker decodes: the plugin feeds the sink. */
extern bool bemi_sink_active;
extern void BemiSinkBegin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time);
extern void BemiSinkContext(Jsonb *context);
extern void BemiSinkChange(XLogRecPtr lsn, const BemiChange *change);
extern void BemiSinkCommit(XLogRecPtr end_lsn);
extern bool BemiSinkSkipTransaction(XLogRecPtr end_lsn);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_SINK_H */
