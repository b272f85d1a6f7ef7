/*
 * snapshot.h: snapshots of existing rows (bemi_snapshot, issue 15). The worker side is C
 * (src/worker/snapshot.c: SPI, transactions, locks); the decoding side is C++
 * (src/decoding/snapshot_records.cpp). What they agree on is the message.
 *
 * A chunk is one transactional logical message with prefix BEMI_SNAPSHOT_PREFIX, signed like a
 * context message (secret.h: the MAC covers the transaction id and the payload, so SQL can neither
 * forge one nor copy one into another transaction). Its payload:
 *   BEMI_SNAPSHOT_MAGIC (10 bytes, NUL included: no JSON context starts so)
 *   uint32 relid, uint32 natts, uint32 nrows      (native byte order: the server decodes its own WAL)
 *   nrows times: uint32 len, then len bytes of a HeapTupleHeader in relid's descriptor, with every
 *   external (TOASTed out of line) value inlined.
 */
#ifndef BEMI_SNAPSHOT_H
#define BEMI_SNAPSHOT_H

#include "postgres.h"

#include "fmgr.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BEMI_SNAPSHOT_PREFIX "bemi_snapshot"
#define BEMI_SNAPSHOT_MAGIC "BEMISNAP1"
#define BEMI_SNAPSHOT_MAGIC_LEN 10
#define BEMI_SNAPSHOT_HEADER_LEN (BEMI_SNAPSHOT_MAGIC_LEN + 3 * 4)

/* The snapshot worker's entry point (the postmaster starts it; one per job). */
extern PGDLLEXPORT void bemi_snapshot_main(Datum arg);

/*
 * In the database's worker, once its slot is consistent: start a worker for every unfinished job
 * (pending, or interrupted by a crash or a restart). A job already being worked on is left to
 * its worker (the new one leaves). Raw PostgreSQL: C++ calls it inside a PgCall, outside a
 * transaction.
 */
extern void BemiResumeSnapshots(Oid dboid);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_SNAPSHOT_H */
