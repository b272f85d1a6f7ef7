/*
 * lifecycle.c: what backends do to a database's capture when the extension or the database goes
 * away. The worker owns its slot; backends ask it to let go and wait for it.
 */
#include "bemi/registry.h"
#include "bemi/lifecycle.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "utils/timestamp.h"

#define LET_GO_TIMEOUT_MS 10000

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

/* Sets a state the worker acts on, wakes it, and waits (bounded) until it has exited. */
static void
AskWorkerToExit(BemiDatabase *db, Oid dboid, BemiWorkerState state)
{
	ExitWait wait = {dboid, state};

	BemiSetState(db, state);
	BemiWakeWorker(dboid);
	(void) BemiWaitFor(db, WorkerGone, &wait,
					   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LET_GO_TIMEOUT_MS), false);
}

/* After DROP EXTENSION commits: the worker drops its slot and origin, then exits. */
void
BemiStopCapture(Oid dboid)
{
	BemiDatabase *db = BemiFindDatabase(dboid);

	if (db != NULL)
		AskWorkerToExit(db, dboid, BEMI_STOPPING);
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
