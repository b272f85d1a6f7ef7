// destination.cpp: bemi_set_destination and what bemi_status() shows of the destination (issue
// 16). Runs in the caller's backend. The worker reads bemi.destination when it starts; a change
// reaches it through the registry at commit (a transaction callback moves the database's
// destination_generation), so a rolled-back call changes nothing.
#include "fn.h"

#include "../worker/remote.hpp"

#include "bemi/guard.hpp"

#include <fmt/format.h>

extern "C" {
#include "bemi/registry.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
}

namespace bemi {
namespace {

bool callback_registered = false;
bool destination_set = false; // in this transaction

// At commit, the worker of this database hears of the new destination. Plain C: it runs in
// PostgreSQL's commit processing and must not throw or raise.
void AtCommit(XactEvent event, void *arg) {
	if (event == XACT_EVENT_COMMIT && destination_set && bemi_shared != nullptr) {
		BemiDatabase *db = BemiFindDatabase(MyDatabaseId);
		if (db != nullptr) {
			SpinLockAcquire(&db->mutex);
			db->destination_generation++;
			db->destination_from_lsn = XactLastCommitEnd;
			SpinLockRelease(&db->mutex);
			BemiWakeWorker(MyDatabaseId);
		}
	}
	// A prepared transaction's commit comes in another session: the worker then sees the new
	// destination when it next starts.
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
	    event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE)
		destination_set = false;
}

void SetDestination(const char *conninfo) {
	if (!PgCall([]() { return superuser(); }))
		throw Error(ERRCODE_INSUFFICIENT_PRIVILEGE, "only a superuser may set where bemi writes the trail",
		            "The destination's connection is made by the server, with its own password file and "
		            "certificates.");
	if (conninfo != nullptr && conninfo[0] == '\0')
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE, "bemi_set_destination needs a connection string", {},
		            "Pass a libpq connection string such as 'host=trail.internal dbname=audit user=bemi', or "
		            "NULL to keep the trail in this database.");
	if (conninfo != nullptr) {
		std::string problem = ConninfoProblem(conninfo);
		if (!problem.empty())
			throw Error(ERRCODE_INVALID_PARAMETER_VALUE,
			            fmt::format("bemi_set_destination refuses this connection string: {}", problem),
			            "bemi keeps the connection string in bemi.destination and shows it in bemi_status(); "
			            "it never holds a password.",
			            "Put the password in the server's password file (passfile=, or ~/.pgpass of the "
			            "server's user) or in a service file, and leave it out of the connection string.");
	}
	PgCall([&]() {
		Oid types[1] = {TEXTOID};
		Datum values[1] = {conninfo != nullptr ? CStringGetTextDatum(conninfo) : Datum(0)};
		char nulls[1] = {conninfo != nullptr ? ' ' : 'n'};

		SPI_connect();
		if (SPI_execute_with_args("UPDATE bemi.destination SET conninfo = $1, updated_at = pg_catalog.now()", 1,
		                          types, values, nulls, false, 0) != SPI_OK_UPDATE ||
		    SPI_processed != 1)
			elog(ERROR, "bemi: bemi.destination must hold exactly one row");
		SPI_finish();
		if (!callback_registered) {
			RegisterXactCallback(AtCommit, nullptr);
			callback_registered = true;
		}
		destination_set = true;
	});
}

bool DestinationReachable(bool *known) {
	BemiDatabase *db = PgCall([]() { return bemi_shared != nullptr ? BemiFindDatabase(MyDatabaseId) : nullptr; });
	int state = 0;
	if (db != nullptr)
		PgCall([&]() {
			SpinLockAcquire(&db->mutex);
			state = db->destination_reachable;
			SpinLockRelease(&db->mutex);
		});
	*known = state != 0;
	return state == 1;
}

} // namespace
} // namespace bemi

extern "C" void BemiSetDestination(const char *conninfo) {
	bemi::Enter([&]() { bemi::SetDestination(conninfo); });
}

extern "C" bool BemiDestinationReachable(bool *known) {
	return bemi::Enter([&]() { return bemi::DestinationReachable(known); });
}
