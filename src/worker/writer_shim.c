/*
 * writer_shim.c: the entry point the postmaster calls for a writer process of a database's worker
 * (bemi.writers). Signal handlers are set up here, in C; everything else is writers.cpp's, entered
 * through the guard.
 */
#include "bemi/worker.h"

#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"

void
bemi_writer_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BemiWriterRun(arg);
}
