/*
 * bemi.h: declarations shared by the C parts of the extension (settings, shared state, the
 * pieces each area exports to the others). C++ files may include it too.
 */
#ifndef BEMI_BEMI_H
#define BEMI_BEMI_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/jsonb.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BEMI_PLUGIN_NAME "bemi"
#define BEMI_MESSAGE_PREFIX "bemi"           /* our context messages */
#define BEMI_TRIGGER_MESSAGE_PREFIX "_bemi"  /* messages from Bemi's _bemi_row_trigger_func */
#define BEMI_RESERVED_KEY "_bemi"            /* database-level identity inside a context */
#define BEMI_MAX_DATABASES 64
#define BEMI_ERROR_LEN 512

/* Settings (bemi.c) */
extern int bemi_max_context_size;
extern bool bemi_replica_identity_full;
extern int bemi_batch_size;
extern int bemi_startup_timeout_ms;
extern bool bemi_partitions_as_root;
extern int bemi_flush_delay_ms;

/* Lifecycle of one database's capture, as seen in shared memory. */
typedef enum BemiWorkerState
{
	BEMI_UNUSED = 0,
	BEMI_STARTING,   /* registered; slot not yet consistent: first writes wait */
	BEMI_RUNNING,    /* slot consistent; worker decoding */
	BEMI_FAILED,     /* worker hit an error; it will be restarted */
	BEMI_STOPPING,   /* DROP EXTENSION committed: worker drops its slot and exits */
	BEMI_PAUSED,     /* DROP DATABASE: worker releases its slot and exits */
	BEMI_FAILING     /* was running; its last attempt failed and no batch was written since */
} BemiWorkerState;

/* One entry per database that has the extension. */
typedef struct BemiDatabase
{
	Oid dboid;
	slock_t mutex;            /* protects the counters below */
	int state;                /* BemiWorkerState */
	bool fresh;               /* created by CREATE EXTENSION: make a new slot */
	int pid;                  /* worker's pid, 0 when none */
	Latch *latch;             /* worker's latch, NULL when none */
	XLogRecPtr applied_lsn;   /* every commit before this is visible in bemi.changes */
	uint64 changes_written;
	TimestampTz last_commit_at; /* commit time of the last transaction written */
	int failures;             /* consecutive failed runs, for backoff */
	char last_error[BEMI_ERROR_LEN];
	TimestampTz last_error_at;
	ConditionVariable progress_cv; /* signalled when state or applied_lsn moves */
} BemiDatabase;

typedef struct BemiShared
{
	LWLock *lock;       /* protects entry allocation and the fields above */
	bool launcher_done; /* entries for existing slots are registered after a restart */
	BemiDatabase databases[BEMI_MAX_DATABASES];
} BemiShared;

extern BemiShared *bemi_shared;

/* registry.c */
extern void BemiShmemRequest(void);
extern void BemiShmemStartup(void);
extern BemiDatabase *BemiFindDatabase(Oid dboid);
extern BemiDatabase *BemiAddDatabase(Oid dboid, bool fresh);
extern void BemiSetState(BemiDatabase *db, BemiWorkerState state);
extern void BemiReportError(BemiDatabase *db, const char *message);
extern void BemiRecovered(BemiDatabase *db);
extern void BemiWakeWorker(Oid dboid);
extern void BemiSlotName(Oid dboid, char *name, size_t len);

/* context/capture.c */
extern bool bemi_is_worker;
extern void BemiContextInit(void);

/* context/ddl_guard.c */
struct PlannedStmt;
extern void BemiGuardDdl(struct PlannedStmt *pstmt, const char *query_string);

/* worker/launcher.c, worker/lifecycle.c */
extern void BemiRegisterLauncher(void);
extern void BemiLaunchWorker(Oid dboid);
extern void BemiStopCapture(Oid dboid);
extern Oid BemiPauseForDropDatabase(const char *dbname);
extern void BemiFinishDropDatabase(Oid dboid, bool dropped);

/* decoding: the sink the plugin feeds when it runs inside the worker */
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

/* Implemented by the worker; called by the plugin's callbacks. */
extern bool bemi_sink_active;
extern void BemiSinkBegin(TransactionId xid, XLogRecPtr end_lsn, TimestampTz commit_time);
extern void BemiSinkContext(Jsonb *context);
extern void BemiSinkChange(XLogRecPtr lsn, const BemiChange *change);
extern void BemiSinkCommit(XLogRecPtr end_lsn);
extern bool BemiSinkSkipTransaction(XLogRecPtr end_lsn);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_BEMI_H */
