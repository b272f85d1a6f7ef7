/*
 * bemi.c: module entry. Settings, shared memory, hooks and the launcher are installed here;
 * each area does its own work.
 */
#include "bemi/settings.h"
#include "bemi/registry.h"
#include "bemi/lifecycle.h"
#include "bemi/context.h"
#include "bemi/protect.h"
#include "bemi/secret.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include <limits.h>

/* PostgreSQL 15 is the oldest supported: shmem_request_hook and MarkGUCPrefixReserved are used as is. */
#if PG_VERSION_NUM < 150000
#error "bemi needs PostgreSQL 15 or later"
#endif

PG_MODULE_MAGIC;

#if PG_VERSION_NUM < 160000
void _PG_init(void);
#endif
static bool check_allow_trail_changes(bool *newval, void **extra, GucSource source);
static void assign_allow_trail_changes(bool newval, void *extra);
static bool check_source(char **newval, void **extra, GucSource source);

int bemi_max_context_size = 1024 * 1024;
bool bemi_replica_identity_full = true;
int bemi_batch_size = 2000;
int bemi_startup_timeout_ms = 30000;
bool bemi_partitions_as_root = true;
int bemi_flush_delay_ms = 10;
bool bemi_allow_drop = false;
bool bemi_allow_trail_changes = false;
int bemi_writers = 2;
int bemi_destination_connections = 2;
char *bemi_source = NULL;
bool bemi_snapshot_on_create = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static void
bemi_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	BemiShmemRequest();
	BemiSecretShmemRequest();
}

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static void
bemi_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	BemiShmemStartup();
	BemiSecretShmemStartup();
}

static void
DefineSettings(void)
{
	DefineCustomIntVariable("bemi.max_context_size",
							"Largest context, in bytes of JSON text, that bemi_set_context or a comment may attach.",
							NULL, &bemi_max_context_size, 1024 * 1024, 2, MaxAllocSize / 2,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomBoolVariable("bemi.replica_identity_full",
							 "Keep recorded tables at REPLICA IDENTITY FULL so before-images are complete.",
							 "New tables get it and ALTER TABLE ... REPLICA IDENTITY anything else is refused. "
							 "Turn off if you manage replica identity yourself; bemi_status() lists tables "
							 "whose images will be incomplete.",
							 &bemi_replica_identity_full, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("bemi.batch_size",
							"Changes the worker writes to bemi.changes per transaction.",
							NULL, &bemi_batch_size, 2000, 1, 1000000, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("bemi.startup_timeout",
							"How long a first write waits for a new capture slot to become consistent.",
							NULL, &bemi_startup_timeout_ms, 30000, 0, INT_MAX, PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bemi.flush_delay",
							"How long the worker lets a small batch gather before writing it.",
							"Longer means fewer, larger batches under load, and more lag.",
							&bemi_flush_delay_ms, 10, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("bemi.writers",
							"Writer processes per database that write the worker's batches into bemi.changes.",
							"0: the worker writes its batches itself, between rounds of decoding. N: N dynamic "
							"background workers write them in parallel with decoding a backlog, in order (small "
							"batches under a steady load the worker still writes itself); each counts against "
							"max_worker_processes. Read when the worker (re)starts.",
							&bemi_writers, 2, 0, 16, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("bemi.destination_connections",
							"Connections per database that the worker writes to its destination through.",
							"With bemi_set_destination: N batches are written there at once, each in its own "
							"transaction on its own connection, committed in order. Each is a backend on the "
							"destination. Read when the worker (re)starts.",
							&bemi_destination_connections, 2, 1, 16, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("bemi.partitions_as_root",
							 "Record changes to a partition under the name of its partitioned table.",
							 NULL, &bemi_partitions_as_root, true, PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("bemi.allow_drop",
							 "Allow this session to drop or detach the trail (bemi.changes, its partitions, bemi's "
							 "tables, schema bemi, the extension) while it holds changes.",
							 "Off: DROP EXTENSION bemi and anything else that would drop the trail is refused "
							 "while bemi.changes holds changes. Superuser only.",
							 &bemi_allow_drop, false, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("bemi.allow_trail_changes",
							 "Allow this session to INSERT into, UPDATE, DELETE, MERGE, TRUNCATE or COPY into "
							 "the trail (bemi.changes, bemi.gaps).",
							 "Off: refused for every role, superusers included. On: allowed, and each such "
							 "statement is recorded in bemi.gaps; the session's own changes are then not "
							 "recorded (each table it writes is named in bemi.gaps). Superuser only, per session.",
							 &bemi_allow_trail_changes, false, PGC_SUSET, 0, check_allow_trail_changes,
							 assign_allow_trail_changes, NULL);
	DefineCustomBoolVariable("bemi.snapshot_on_create",
							 "Make CREATE EXTENSION bemi take a snapshot of every table it records.",
							 "Each table with a primary key (a partitioned table as a whole) gets a job in "
							 "bemi.snapshots; the worker takes them once capture has started, and their rows "
							 "are recorded as SNAPSHOT changes. Off by default.",
							 &bemi_snapshot_on_create, false, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("bemi.source",
							   "Narrow bemi's read functions to the changes of one source.",
							   "On a trail that receives other servers' changes (bemi_set_destination there): "
							   "'<system identifier>' or '<system identifier>/<database>' of the source, or "
							   "'local' for the changes captured here. Empty: every change.",
							   &bemi_source, "", PGC_USERSET, 0, check_source, NULL, NULL);
	MarkGUCPrefixReserved("bemi");
}

/*
 * bemi.source: '', 'local', '<system identifier>' or '<system identifier>/<database>'. Anything
 * else would match no change and make every read (time travel too) silently empty.
 */
static bool
check_source(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;
	const char *p = v;

	if (v == NULL || v[0] == '\0' || strcmp(v, "local") == 0)
		return true;
	while (*p >= '0' && *p <= '9')
		p++;
	if (p > v && (*p == '\0' || (*p == '/' && p[1] != '\0' && strlen(p + 1) < NAMEDATALEN)))
		return true;
	GUC_check_errdetail("bemi.source is '' (every change), 'local' (the changes captured here), a source's "
						"system identifier, or '<system identifier>/<database>'.");
	return false;
}

/* Per session only (SET, PGOPTIONS, a function's SET clause): see BemiAllowTrailChangesCheck. */
static bool
check_allow_trail_changes(bool *newval, void **extra, GucSource source)
{
	if (BemiAllowTrailChangesCheck(*newval, (int) source))
		return true;
	GUC_check_errdetail("bemi.allow_trail_changes is set per session (SET or PGOPTIONS), never for a database, a role or the server.");
	return false;
}

static void
assign_allow_trail_changes(bool newval, void *extra)
{
	BemiAllowTrailChangesAssign(newval);
}

void
_PG_init(void)
{
	DefineSettings();
	/* Hooks capture context in every backend; the output plugin needs none of this. */
	BemiContextInit();
	/* The trail cannot be dropped or edited silently: hooks in every backend. */
	BemiProtectInit();

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bemi_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bemi_shmem_startup;
	BemiRegisterLauncher();
}
