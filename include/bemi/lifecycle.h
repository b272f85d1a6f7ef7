/*
 * lifecycle.h: starting and stopping a database's capture. The launcher and the worker's start
 * are in src/worker/launcher.cpp; what backends do when the extension or the database goes away is
 * in src/shared/lifecycle.c.
 */
#ifndef BEMI_LIFECYCLE_H
#define BEMI_LIFECYCLE_H

#include "postgres.h"

#include "bemi/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

extern void BemiRegisterLauncher(void);
extern void BemiLaunchWorker(Oid dboid);
extern void BemiStopCapture(Oid dboid);
extern void BemiHoldForDrop(void);
extern bool BemiHoldsWorker(void);
extern void BemiEndHold(void);
extern void BemiEndHoldAtLevel(int level);
extern void BemiHoldToParent(int level);
extern bool BemiHoldRequested(BemiDatabase *db);
extern void BemiHoldStill(BemiDatabase *db);
extern void BemiAckHold(BemiDatabase *db);
extern Oid BemiPauseForDropDatabase(const char *dbname);
extern void BemiFinishDropDatabase(Oid dboid, bool dropped);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_LIFECYCLE_H */
