// ingest.cpp: bemi._ingest's write, on a destination: the rows a source's worker sent, parsed and
// checked by ingest_shim.c, into bemi.changes by the table-level batch insert (multi_insert.cpp),
// as the worker writes its local trail.
#include "fn.h"

#include "../worker/multi_insert.hpp"

#include "bemi/guard.hpp"

static_assert(bemi::kSentColumns == BEMI_INGEST_COLUMNS, "the batch's columns, as read and as written");

extern "C" bool BemiIngestWrite(int count, const Datum *values, const bool *nulls) {
	return bemi::Enter([&] { return bemi::PgCall([&] { return bemi::MultiInsertSent(count, values, nulls); }); });
}
