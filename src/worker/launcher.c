/*
 * launcher.c: starting workers. CREATE EXTENSION starts its database's worker at once; after a
 * server start the launcher starts one for every bemi slot, since a slot exists exactly while
 * its database has the extension.
 */
#include "bemi/worker.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(bemi_start_worker);

void
BemiRegisterLauncher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "bemi", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "bemi_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "bemi launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "bemi launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

void
BemiLaunchWorker(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	strlcpy(worker.bgw_library_name, "bemi", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "bemi_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "bemi worker for database %u", dboid);
	strlcpy(worker.bgw_type, "bemi worker", BGW_MAXLEN);
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the bemi worker: no background worker slot is free"),
				 errhint("Raise max_worker_processes (now %d) and restart the server.", max_worker_processes)));
}

/* Runs once per server start (and after a crash restart); then idles until shutdown. */
void
bemi_launcher_main(Datum arg)
{
	Oid databases[BEMI_MAX_DATABASES];
	int ndatabases = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots && ndatabases < BEMI_MAX_DATABASES; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];
		char expected[NAMEDATALEN];

		if (!s->in_use || !OidIsValid(s->data.database) ||
			strcmp(NameStr(s->data.plugin), BEMI_PLUGIN_NAME) != 0)
			continue;
		BemiSlotName(s->data.database, expected, sizeof(expected));
		if (strcmp(NameStr(s->data.name), expected) == 0)
			databases[ndatabases++] = s->data.database;
	}
	LWLockRelease(ReplicationSlotControlLock);

	for (int i = 0; i < ndatabases; i++)
	{
		BemiAddDatabase(databases[i], false);
		BemiLaunchWorker(databases[i]);
	}
	bemi_shared->launcher_done = true;

	while (!ShutdownRequestPending)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/* Is `name` in a comma-separated setting such as output_plugin_libraries? */
static bool
SettingLists(const char *setting, const char *name)
{
	char *copy;
	List *names;
	ListCell *lc;
	bool found = false;

	if (setting == NULL)
		return true; /* the setting does not exist in this server version */
	copy = pstrdup(setting);
	if (!SplitIdentifierString(copy, ',', &names))
		return false;
	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), name) == 0)
			found = true;
	return found;
}

/* Called by the extension script: refuse a server that cannot capture, then start the worker. */
Datum
bemi_start_worker(PG_FUNCTION_ARGS)
{
	if (bemi_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bemi must be loaded at server start"),
				 errhint("Add bemi to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bemi needs wal_level = logical"),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
	if (!SettingLists(GetConfigOption("output_plugin_libraries", true, false), BEMI_PLUGIN_NAME))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("output_plugin_libraries does not allow the bemi output plugin"),
				 errdetail("output_plugin_libraries is \"%s\".",
						   GetConfigOption("output_plugin_libraries", true, false)),
				 errhint("Add bemi to output_plugin_libraries in postgresql.conf, for example "
						 "output_plugin_libraries = 'pgoutput, test_decoding, bemi', and reload.")));
	BemiAddDatabase(MyDatabaseId, true);
	BemiLaunchWorker(MyDatabaseId);
	PG_RETURN_VOID();
}
