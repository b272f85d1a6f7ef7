/*
 * worker.h: pieces of the background worker (the files in src/worker).
 */
#ifndef BEMI_WORKER_H
#define BEMI_WORKER_H

#include "bemi/registry.h"
#include "bemi/settings.h"
#include "bemi/sink.h"
#include "bemi/lifecycle.h"
#include "bemi/context.h"

#include "replication/logical.h"
#include "replication/origin.h"

/* Where the worker stands in the stream; see bemi.progress. */
typedef struct BemiProgress
{
	XLogRecPtr txn_end_lsn;
	int64 txn_records;
	bool txn_complete;
} BemiProgress;

/* sink.c: buffers the plugin's records, writes them in batches with the progress. */
extern void BemiSinkStart(Oid dboid, const BemiProgress *progress);
extern bool BemiSinkPending(void);
extern int64 BemiSinkPendingChanges(void);
extern void BemiSinkDrain(BemiDatabase *db);
extern void BemiSinkStop(void);
extern BemiProgress BemiLoadProgress(void);
extern void BemiRecordGap(XLogRecPtr from_lsn, const char *reason);

/* slot.c: the database's logical slot and decoding context. */
extern bool BemiSlotExists(const char *name);
extern XLogRecPtr BemiSlotLostFrom(const char *name); /* invalid unless PostgreSQL invalidated it */
extern void BemiCreateSlot(const char *name);
extern void BemiDropSlot(const char *name);
extern LogicalDecodingContext *BemiStartDecoding(const char *name);
extern void BemiStopDecoding(LogicalDecodingContext *ctx);

/* upkeep.c: partitions and retention of bemi.changes, when due. */
extern void BemiUpkeep(BemiDatabase *db);

/* plugin.c */
extern RepOriginId bemi_worker_origin;

/* worker.c */
extern PGDLLEXPORT void bemi_worker_main(Datum arg);
extern PGDLLEXPORT void bemi_launcher_main(Datum arg);

#endif
