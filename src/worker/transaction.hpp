// transaction.hpp: the worker's one way to run work in a transaction of its own (worker code only).
//
// Plain C-style sequences, called only inside bemi::PgCall: an ERROR anywhere leaves through
// PgCall, and the process's abort processing (the worker exits on errors) cleans up the
// transaction, the snapshot and SPI. No RAII for any of them (DESIGN.md).
#pragma once

#include "bemi/guard.hpp"

extern "C" {
#include "access/xact.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
}

// LSN_FORMAT_ARGS for C++ (PostgreSQL's checks its argument's type with a C-only builtin).
#define BEMI_LSN_ARGS(lsn) static_cast<uint32>((lsn) >> 32), static_cast<uint32>(lsn)

namespace bemi {

// Runs body in a transaction; the caller's memory context is current again afterwards (a commit
// leaves TopMemoryContext current). body: plain code, nothing with a destructor, no throw.
template <typename F> void InTransaction(F &&body) {
	MemoryContext caller = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	body();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
}

// The same with SPI connected and a snapshot pushed, for body's statements.
template <typename F> void InTransactionWithSpi(F &&body) {
	InTransaction([&]() {
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		body();
		SPI_finish();
		PopActiveSnapshot();
	});
}

} // namespace bemi
