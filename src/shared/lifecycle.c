/*
 * lifecycle.c: what backends do to a database's capture when the extension or the database goes
 * away. The worker owns its slot; backends ask it to let go and wait for it.
 */
#include "bemi/registry.h"
#include "bemi/lifecycle.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/acl.h"
#include "utils/timestamp.h"

#define LET_GO_TIMEOUT_MS 10000
#define HOLD_CHECK_MS 1000

/* The database whose worker holds still for this backend's transaction, if any, and the
 * transaction nesting level that asked. */
static Oid held_database = InvalidOid;
static int held_level = 0;

typedef struct ExitWait
{
	Oid dboid;
	BemiWorkerState state;
} ExitWait;

/* The worker has exited, or the entry was given to something else. */
static bool
WorkerGone(BemiDatabase *db, void *arg)
{
	ExitWait *wait = (ExitWait *) arg;

	return db->dboid != wait->dboid || db->state != (int) wait->state || db->pid == 0;
}

/* Wakes the worker, which acts on `state` (already set), and waits (bounded) until it has exited. */
static void
WaitForWorkerExit(BemiDatabase *db, Oid dboid, BemiWorkerState state)
{
	ExitWait wait = {dboid, state};

	BemiWakeWorker(dboid);
	(void) BemiWaitFor(db, WorkerGone, &wait,
					   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LET_GO_TIMEOUT_MS), false);
}

/* Sets a state the worker acts on, wakes it, and waits (bounded) until it has exited. */
static void
AskWorkerToExit(BemiDatabase *db, Oid dboid, BemiWorkerState state)
{
	BemiSetState(db, state);
	WaitForWorkerExit(db, dboid, state);
}

/* After DROP EXTENSION commits: the worker drops its slot and origin, then exits. */
void
BemiStopCapture(Oid dboid)
{
	BemiDatabase *db = BemiFindDatabase(dboid);

	if (db == NULL)
		return;
	BemiSetState(db, BEMI_STOPPING);
	BemiEndHold();
	/* A worker still making its slot may be waiting for this very transaction (CREATE EXTENSION
	 * in it too): it retires once its slot is made. */
	if (db->fresh)
	{
		BemiWakeWorker(dboid);
		return;
	}
	WaitForWorkerExit(db, dboid, BEMI_STOPPING);
}

/*
 * Holding the worker still for a drop.
 *
 * DROP EXTENSION locks the trail's objects one by one in its own order (the id sequence before
 * bemi.changes); a batch holds bemi.changes, then draws its ids. Met in the middle, the two
 * deadlock and one fails (so could ALTER EXTENSION bemi UPDATE, whose script rebuilds tables of
 * the trail). So before a statement that may drop or update the extension runs, the backend
 * asks the worker to hold still between batches (its writers drained, no transaction open, no
 * lock held) until the backend's transaction ends: committed with the extension gone, the worker
 * retires (BemiStopCapture); otherwise it goes on from where it was, having lost nothing.
 * The backend waits for the worker (bounded): a batch blocked by a lock that this transaction
 * already holds would never end, and then the drop goes ahead as before.
 */

/* The worker holds still for us, or there is nothing to wait for (no worker, or one still making
 * its slot: it may be waiting for this very transaction, and holds nothing of the trail). */
static bool
WorkerHolds(BemiDatabase *db, void *arg)
{
	return db->holding || db->hold_pid != MyProcPid || db->pid == 0 || db->fresh ||
		(db->state != BEMI_RUNNING && db->state != BEMI_FAILING && db->state != BEMI_STARTING);
}

/* Does backend `pid` still run transaction `vxid`? */
static bool
HolderRunning(int pid, VirtualTransactionId vxid)
{
	PGPROC	   *proc = BackendPidGetProc(pid);
	VirtualTransactionId now;

	if (proc == NULL)
		return false;
	GET_VXID_FROM_PGPROC(now, *proc);
	return VirtualTransactionIdEquals(now, vxid);
}

/* May the current user drop the extension (its owner, or a superuser)? */
static bool
MayDropIt(void)
{
	Oid			extension = get_extension_oid("bemi", true);

	if (!OidIsValid(extension))
		return false;
#if PG_VERSION_NUM >= 160000
	return object_ownercheck(ExtensionRelationId, extension, GetUserId());
#else
	return pg_extension_ownercheck(extension, GetUserId());
#endif
}

/*
 * Before a drop that may take the extension, in its transaction. Only for a role that may drop
 * it: anyone else's DROP OWNED, or a failed DROP EXTENSION in a transaction left open, would
 * otherwise stop the capture for as long as they like.
 */
void
BemiHoldForDrop(void)
{
	BemiDatabase *db = BemiFindDatabase(MyDatabaseId);
	VirtualTransactionId vxid;
	bool		taken = false;

	if (db == NULL || OidIsValid(held_database) || !MayDropIt())
		return;
	GET_VXID_FROM_PGPROC(vxid, *MyProc);
	SpinLockAcquire(&db->mutex);
	if (db->hold_pid == 0)
	{
		db->hold_pid = MyProcPid;
		db->hold_vxid = vxid;
		db->holding = false;
		taken = true;
	}
	SpinLockRelease(&db->mutex);
	/* Another drop holds the worker already: ours waits for that transaction's locks anyway. */
	if (!taken)
		return;
	held_database = MyDatabaseId;
	held_level = GetCurrentTransactionNestLevel();
	(void) BemiWaitFor(db, WorkerHolds, NULL,
					   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LET_GO_TIMEOUT_MS), true);
}

/* Does the worker hold still for this backend's transaction? (Read at every transaction end.) */
bool
BemiHoldsWorker(void)
{
	return OidIsValid(held_database);
}

/* The hold of backend `pid`, if it is still the one, ends. */
static void
ClearHold(BemiDatabase *db, int pid)
{
	SpinLockAcquire(&db->mutex);
	if (db->hold_pid == pid)
	{
		db->hold_pid = 0;
		db->holding = false;
	}
	SpinLockRelease(&db->mutex);
}

/* This backend's transaction ends: the worker it held goes on. */
void
BemiEndHold(void)
{
	BemiDatabase *db;

	if (!OidIsValid(held_database))
		return;
	db = BemiFindDatabase(held_database);
	if (db != NULL)
	{
		ClearHold(db, MyProcPid);
		BemiWakeWorker(held_database);
	}
	held_database = InvalidOid;
}

/* A subtransaction at `level` is rolled back: so is a drop it held the worker for. */
void
BemiEndHoldAtLevel(int level)
{
	if (OidIsValid(held_database) && held_level >= level)
		BemiEndHold();
}

/* A subtransaction at `level` is committed: a drop it held the worker for is now its parent's. */
void
BemiHoldToParent(int level)
{
	if (OidIsValid(held_database) && held_level >= level)
		held_level = level - 1;
}

/* The worker, between batches: has a drop asked it to hold still? */
bool
BemiHoldRequested(BemiDatabase *db)
{
	bool		requested;

	SpinLockAcquire(&db->mutex);
	requested = db->hold_pid != 0;
	SpinLockRelease(&db->mutex);
	return requested;
}

/* The worker holds nothing (its backoff, or between batches): a drop need not wait for it. */
void
BemiAckHold(BemiDatabase *db)
{
	bool		told;

	SpinLockAcquire(&db->mutex);
	told = db->hold_pid != 0 && !db->holding;
	if (told)
		db->holding = true;
	SpinLockRelease(&db->mutex);
	if (told)
		ConditionVariableBroadcast(&db->progress_cv);
}

/*
 * The worker, outside any transaction and with nothing in flight: holds still until the
 * dropping transaction ends (or its backend is gone), or the drop committed (BEMI_STOPPING).
 */
void
BemiHoldStill(BemiDatabase *db)
{
	pgstat_report_activity(STATE_IDLE, "bemi: holding still for a drop or update of the extension");
	for (;;)
	{
		int			pid;
		VirtualTransactionId vxid;

		BemiAckHold(db);
		SpinLockAcquire(&db->mutex);
		pid = db->hold_pid;
		vxid = db->hold_vxid;
		SpinLockRelease(&db->mutex);
		if (pid == 0 || db->state == BEMI_STOPPING || db->state == BEMI_PAUSED)
			break;
		if (!HolderRunning(pid, vxid))
		{
			/* Gone without ending the hold (it always does at its transaction's end). */
			ClearHold(db, pid);
			break;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, HOLD_CHECK_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Before DROP DATABASE: the worker is connected to the database and holds its slot, either of
 * which makes the drop fail. It lets go of both (the slot stays; DROP DATABASE drops it).
 * Returns the database's OID if its capture was paused.
 */
Oid
BemiPauseForDropDatabase(const char *dbname)
{
	Oid dboid = get_database_oid(dbname, true);
	BemiDatabase *db = OidIsValid(dboid) ? BemiFindDatabase(dboid) : NULL;

	if (db == NULL)
		return InvalidOid;
	AskWorkerToExit(db, dboid, BEMI_PAUSED);
	return dboid;
}

/* After DROP DATABASE: forget the database, or resume its capture if the drop failed. */
void
BemiFinishDropDatabase(Oid dboid, bool dropped)
{
	BemiDatabase *db = BemiFindDatabase(dboid);

	if (db == NULL)
		return;
	if (dropped)
	{
		char origin[NAMEDATALEN];

		BemiSetState(db, BEMI_UNUSED);
		BemiSlotName(dboid, origin, sizeof(origin));
		replorigin_drop_by_name(origin, true, false);
	}
	else
	{
		BemiSetState(db, BEMI_STARTING);
		BemiLaunchWorker(dboid);
	}
}
