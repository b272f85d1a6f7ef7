/*
 * worker.h: the background worker's pieces that C and C++ share (src/worker). The worker's core
 * is C++ (the .hpp files in src/worker); what is here is called across the boundary.
 */
#ifndef BEMI_WORKER_H
#define BEMI_WORKER_H

#include "bemi/registry.h"
#include "bemi/settings.h"
#include "bemi/sink.h"
#include "bemi/lifecycle.h"
#include "bemi/context.h"

#include "replication/logical.h"
#include "replication/origin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* slot_shim.c (C: XL_ROUTINE): the database's logical slot and decoding context. */
extern bool BemiSlotExists(const char *name);
extern XLogRecPtr BemiSlotLostFrom(const char *name); /* invalid unless PostgreSQL invalidated it */
extern void BemiCreateSlot(const char *name);
extern void BemiDropSlot(const char *name);
extern LogicalDecodingContext *BemiStartDecoding(const char *name);
extern void BemiStopDecoding(LogicalDecodingContext *ctx);

/* plugin: the worker's replication origin, whose changes the plugin skips. */
extern RepOriginId bemi_worker_origin;

/* worker.cpp: one database's worker, from claim to exit (called by bemi_worker_main). */
extern void BemiWorkerRun(Oid dboid);

/* writers.cpp: one writer process of a database's worker (bemi.writers), from its DSM handle. */
extern void BemiWriterRun(Datum arg);

/* launcher.cpp: start the workers of every database with a bemi slot, then idle (the launcher). */
extern void BemiLauncherRun(void);
/* launcher.cpp: refuse a server that cannot capture, then start this database's worker. */
extern void BemiStartWorker(void);

/* worker_shim.c, launcher_shim.c: the entry points the postmaster starts. */
extern PGDLLEXPORT void bemi_worker_main(Datum arg);
extern PGDLLEXPORT void bemi_launcher_main(Datum arg);
extern PGDLLEXPORT void bemi_writer_main(Datum arg);

#ifdef __cplusplus
}
#endif

#endif
