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

/*
 * The changes of one transaction that tracking rules kept out of the trail, by kind of rule; the
 * worker adds them to its registry entry (bemi_status()) once the transaction's end is written.
 */
typedef struct BemiSkipped
{
	uint64 table_rules;  /* the table is ignored (bemi_ignore(target)), TRUNCATE included */
	uint64 column_rules; /* an UPDATE changed only ignored columns */
	uint64 writer_rules; /* the writer is ignored (bemi_ignore_writer) */
} BemiSkipped;

/* True while the worker decodes: the plugin feeds the sink. */
extern bool bemi_sink_active;
extern void BemiSinkBegin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time);
extern void BemiSinkContext(Jsonb *context);
extern void BemiSinkChange(XLogRecPtr lsn, const BemiChange *change);
extern void BemiSinkCommit(XLogRecPtr end_lsn, const BemiSkipped *skipped);
extern bool BemiSinkSkipTransaction(XLogRecPtr end_lsn);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_SINK_H */
