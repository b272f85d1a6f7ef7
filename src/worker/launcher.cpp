// launcher.cpp: starting workers. CREATE EXTENSION starts its database's worker at once; after a
// server start the launcher starts one for every bemi slot, since a slot exists exactly while its
// database has the extension. Runs in the postmaster (_PG_init), the launcher, and backends
// (CREATE EXTENSION, and at commit through lifecycle.c). Entered through bemi::Enter; PostgreSQL
// work inside PgCall.
#include "bemi/guard.hpp"

#include <string>
#include <vector>

extern "C" {
#include "bemi/worker.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/varlena.h"
}

namespace bemi {

namespace {

// The databases whose bemi slot exists (named by BemiSlotName, with our plugin).
std::vector<Oid> SlotDatabases() {
	std::vector<Oid> databases;
	struct Found {
		Oid databases[BEMI_MAX_DATABASES];
		int count;
	} found{};
	PgCall([&]() {
		LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
		for (int i = 0; i < max_replication_slots && found.count < BEMI_MAX_DATABASES; i++) {
			ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];
			char expected[NAMEDATALEN];

			if (!s->in_use || !OidIsValid(s->data.database) ||
			    strcmp(NameStr(s->data.plugin), BEMI_PLUGIN_NAME) != 0)
				continue;
			BemiSlotName(s->data.database, expected, sizeof(expected));
			if (strcmp(NameStr(s->data.name), expected) == 0)
				found.databases[found.count++] = s->data.database;
		}
		LWLockRelease(ReplicationSlotControlLock);
	});
	databases.assign(found.databases, found.databases + found.count);
	return databases;
}

// Is `name` in a comma-separated setting such as output_plugin_libraries? (PostgreSQL's own
// parsing of identifier lists: quotes, case.) A setting this server does not have allows it.
bool SettingLists(const char *setting, const char *name) {
	if (setting == nullptr)
		return true;
	return PgCall([&]() {
		char *copy = pstrdup(setting);
		List *names;
		ListCell *lc;
		bool found = false;

		if (!SplitIdentifierString(copy, ',', &names))
			return false;
		foreach (lc, names)
			if (strcmp(static_cast<char *>(lfirst(lc)), name) == 0)
				found = true;
		return found;
	});
}

} // namespace

} // namespace bemi

extern "C" void BemiRegisterLauncher(void) {
	bemi::Enter([]() {
		bemi::PgCall([]() {
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
		});
	});
}

namespace bemi {

// Registers database dboid's worker with the postmaster.
void LaunchWorker(Oid dboid) {
	bool registered = PgCall([&]() {
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
		return RegisterDynamicBackgroundWorker(&worker, &handle);
	});
	if (!registered)
		throw Error(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
		            "could not start the bemi worker: no background worker slot is free", {},
		            "Raise max_worker_processes (now " + std::to_string(max_worker_processes) +
		                ") and restart the server.");
}

} // namespace bemi

extern "C" void BemiLaunchWorker(Oid dboid) {
	bemi::Enter([&]() { bemi::LaunchWorker(dboid); });
}

// Runs once per server start (and after a crash restart); then idles until shutdown.
extern "C" void BemiLauncherRun(void) {
	bemi::Enter([]() {
		for (Oid dboid : bemi::SlotDatabases()) {
			bemi::PgCall([&]() { BemiAddDatabase(dboid, false); });
			bemi::LaunchWorker(dboid);
		}
		bemi::PgCall([]() {
			bemi_shared->launcher_done = true;
			while (!ShutdownRequestPending) {
				(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
			}
			proc_exit(0);
		});
	});
}

// Called by the extension script. A server that cannot capture (bemi not preloaded, WAL not
// logical) still gets the trail and its read functions: it can be another database's destination
// (bemi_set_destination), and the warning says what capture needs. A server set up for capture
// whose output_plugin_libraries leaves bemi out is refused: its capture would not start.
extern "C" void BemiStartWorker(void) {
	bemi::Enter([]() {
		if (bemi_shared == nullptr || wal_level < WAL_LEVEL_LOGICAL) {
			bool preloaded = bemi_shared != nullptr;
			bemi::PgCall([&]() {
				ereport(WARNING,
				        (errcode(ERRCODE_WARNING),
				         errmsg("bemi does not capture the changes of this database: %s",
				                preloaded ? "wal_level is not logical" : "bemi is not loaded at server start"),
				         errdetail("This database can hold a trail as the destination of other databases "
				                   "(bemi_set_destination there); capture here needs "
				                   "shared_preload_libraries = 'bemi' and wal_level = logical."),
				         errhint("%s", preloaded ? "Set wal_level = logical in postgresql.conf and restart the "
				                                   "server, then DROP and CREATE EXTENSION bemi."
				                                 : "Add bemi to shared_preload_libraries (and wal_level = "
				                                   "logical) in postgresql.conf and restart the server, then "
				                                   "DROP and CREATE EXTENSION bemi.")));
			});
			return;
		}
		const char *allowed =
		    bemi::PgCall([]() { return GetConfigOption("output_plugin_libraries", true, false); });
		if (!bemi::SettingLists(allowed, BEMI_PLUGIN_NAME))
			throw bemi::Error(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			                  "output_plugin_libraries does not allow the bemi output plugin",
			                  std::string("output_plugin_libraries is \"") + allowed + "\".",
			                  "Add bemi to output_plugin_libraries in postgresql.conf, for example "
			                  "output_plugin_libraries = 'pgoutput, test_decoding, bemi', and reload.");
		bemi::PgCall([]() { BemiAddDatabase(MyDatabaseId, true); });
		bemi::LaunchWorker(MyDatabaseId);
	});
}
