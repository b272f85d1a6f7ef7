/*
 * slot_shim.c: the database's logical replication slot, created, opened for decoding and dropped by
 * its worker. C only: XL_ROUTINE is a compound literal C++ cannot spell.
 */
#include "bemi/worker.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogutils.h"
#include "nodes/makefuncs.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/memutils.h"

/* Is the slot there, and has PostgreSQL invalidated it (max_slot_wal_keep_size exceeded)? */
static bool
LookupSlot(const char *name, XLogRecPtr *lost_from)
{
	bool found = false;

	*lost_from = InvalidXLogRecPtr;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (s->in_use && strcmp(NameStr(s->data.name), name) == 0)
		{
			found = true;
			SpinLockAcquire(&s->mutex);
#if PG_VERSION_NUM >= 160000
			if (s->data.invalidated != RS_INVAL_NONE)
				*lost_from = Max(s->data.confirmed_flush, 1);
#else
			if (s->data.invalidated_at != InvalidXLogRecPtr)
				*lost_from = Max(s->data.confirmed_flush, 1);
#endif
			SpinLockRelease(&s->mutex);
		}
	}
	LWLockRelease(ReplicationSlotControlLock);
	return found;
}

bool
BemiSlotExists(const char *name)
{
	XLogRecPtr lost_from;

	return LookupSlot(name, &lost_from);
}

XLogRecPtr
BemiSlotLostFrom(const char *name)
{
	XLogRecPtr lost_from;

	LookupSlot(name, &lost_from);
	return lost_from;
}

/*
 * Creates the slot and waits until it is consistent. Transactions that are running meanwhile
 * (CREATE EXTENSION's own among them) must finish first; their successors are all decoded.
 */
void
BemiCreateSlot(const char *name)
{
	LogicalDecodingContext *ctx;

	CheckLogicalDecodingRequirements();
#if PG_VERSION_NUM >= 170000
	/* Failover-ready: sync_replication_slots on a standby carries the slot (and the trail on). */
	ReplicationSlotCreate(name, true, RS_EPHEMERAL, false, true, false);
#else
	ReplicationSlotCreate(name, true, RS_EPHEMERAL, false);
#endif
	ctx = CreateInitDecodingContext(BEMI_PLUGIN_NAME, NIL, false, InvalidXLogRecPtr,
									XL_ROUTINE(.page_read = read_local_xlog_page,
											   .segment_open = wal_segment_open,
											   .segment_close = wal_segment_close),
									NULL, NULL, NULL);
	DecodingContextFindStartpoint(ctx);
	FreeDecodingContext(ctx);
	ReplicationSlotPersist();
	ReplicationSlotRelease();
}

void
BemiDropSlot(const char *name)
{
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	if (BemiSlotExists(name))
		ReplicationSlotDrop(name, true);
}

static void
NoWrite(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
	elog(ERROR, "bemi: the worker's decoding context writes to its sink, not to a stream");
}

/* Acquires the slot and opens a decoding context that feeds the worker's sink. */
LogicalDecodingContext *
BemiStartDecoding(const char *name)
{
	LogicalDecodingContext *ctx;
	List *options = list_make1(makeDefElem("sink", NULL, -1));

#if PG_VERSION_NUM >= 180000
	ReplicationSlotAcquire(name, true, true);
#else
	ReplicationSlotAcquire(name, true);
#endif
	ctx = CreateDecodingContext(InvalidXLogRecPtr, options, false,
								XL_ROUTINE(.page_read = read_local_xlog_page,
										   .segment_open = wal_segment_open,
										   .segment_close = wal_segment_close),
								NoWrite, NoWrite, NULL);

	/*
	 * Decoding outside a transaction, PostgreSQL marks this process as a walsender's kind, and
	 * every other snapshot leaves its transactions out (it expects no writes from it). Ours writes
	 * the trail: left out, a batch still open looked aborted to a concurrent reader, which marked
	 * its rows dead for good and bemi.progress's previous row alive. Decoding inside a transaction
	 * (pg_logical_slot_get_changes) never has the mark: neither do we (test/t/016).
	 */
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	MyProc->statusFlags &= ~PROC_IN_LOGICAL_DECODING;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);
	XLogBeginRead(ctx->reader, MyReplicationSlot->data.restart_lsn);
	return ctx;
}

void
BemiStopDecoding(LogicalDecodingContext *ctx)
{
	FreeDecodingContext(ctx);
	ReplicationSlotRelease();
}
