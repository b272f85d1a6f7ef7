/*
 * launcher_shim.c: the entry points of starting workers: the launcher's main, which the
 * postmaster calls once per server start, and the SQL function bemi_start_worker, which the
 * extension script calls. Signal handlers are set here, in C; the work is launcher.cpp's.
 */
#include "bemi/worker.h"

#include "fmgr.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"

PG_FUNCTION_INFO_V1(bemi_start_worker);

void
bemi_launcher_main(Datum arg)
{
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BemiLauncherRun();
}

Datum
bemi_start_worker(PG_FUNCTION_ARGS)
{
	BemiStartWorker();
	PG_RETURN_VOID();
}
