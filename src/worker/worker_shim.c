/*
 * worker_shim.c: the entry point the postmaster calls for a database's background worker. Signal
 * handlers are set up here, in C; everything else is worker.cpp's, entered through the guard.
 */
#include "bemi/worker.h"

#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"

void
bemi_worker_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BemiWorkerRun(DatumGetObjectId(arg));
}
