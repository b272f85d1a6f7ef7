/*
 * registry.h: the shared-memory registry of databases that capture (src/shared/registry.c).
 * Every backend reads it (is this database captured? is its slot ready?); the worker and the
 * launcher write it.
 */
#ifndef BEMI_REGISTRY_H
#define BEMI_REGISTRY_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/spin.h"

#include "bemi/bemi.h"

#ifdef __cplusplus
extern "C" {
#endif

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
	/* changes the tracking rules kept out, counted with the batch that completes their transaction */
	uint64 skipped_table_rules;
	uint64 skipped_column_rules;
	uint64 skipped_writer_rules;
	TimestampTz last_commit_at; /* commit time of the last transaction written */
	int failures;             /* consecutive failed runs, for backoff */
	char last_error[BEMI_ERROR_LEN];
	TimestampTz last_error_at;
	ConditionVariable progress_cv; /* signalled when state or applied_lsn moves */
	/* The worker's writer processes (bemi.writers, src/worker/writers.cpp), set by the worker. */
	uint32 writers_dsm;       /* its shared memory for them (a dsm_handle), 0 when none: a new run
	                           * waits there for the writers of the last one to be gone */
	int writers;              /* writer processes running */
	uint64 batches_sent;      /* batches handed to writers in this run */
	uint64 batches_committed; /* of those, committed */
	/* The trail in another database (bemi_set_destination, src/worker/remote.cpp). */
	uint32 destination_generation; /* moves when a bemi_set_destination commits: the worker
	                                * writes out what it has and starts again */
	XLogRecPtr destination_from_lsn; /* the end of that commit: transactions that end after it go
	                                  * to the new destination, those before to the old */
	int destination_reachable;     /* the worker's last attempt there: 0 none, 1 worked, 2 failed */
	/* A drop that may take the extension (DROP EXTENSION, DROP SCHEMA ... CASCADE, DROP OWNED), or
	 * its update: the worker holds still, between batches, until that transaction ends
	 * (lifecycle.c).
	 * Under mutex. */
	int hold_pid;                  /* the dropping backend, 0 when none */
	VirtualTransactionId hold_vxid; /* its transaction */
	bool holding;                  /* the worker holds still for it */
} BemiDatabase;

typedef struct BemiShared
{
	LWLock *lock;       /* protects entry allocation and the fields above */
	bool launcher_done; /* entries for existing slots are registered after a restart */
	BemiDatabase databases[BEMI_MAX_DATABASES];
} BemiShared;

extern BemiShared *bemi_shared;

extern void BemiShmemRequest(void);
extern void BemiShmemStartup(void);
extern BemiDatabase *BemiFindDatabase(Oid dboid);
extern BemiDatabase *BemiAddDatabase(Oid dboid, bool fresh);
extern void BemiSetState(BemiDatabase *db, BemiWorkerState state);
extern void BemiReportError(BemiDatabase *db, const char *message);
extern void BemiRecovered(BemiDatabase *db);
extern void BemiWakeWorker(Oid dboid);

/* The name of a database's slot and of its worker's replication origin: "bemi_<dboid>". */
extern void BemiSlotName(Oid dboid, char *name, size_t len);

/*
 * Sleeps on db->progress_cv until done(db, arg) holds or the deadline passes; true if done.
 * The worker signals the variable whenever the state or the applied position moves. With
 * wake_worker, the worker's latch is set before every sleep.
 */
typedef bool (*BemiWaitCondition) (BemiDatabase *db, void *arg);
extern bool BemiWaitFor(BemiDatabase *db, BemiWaitCondition done, void *arg, TimestampTz deadline,
						bool wake_worker);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_REGISTRY_H */
