// ddl_guard.hpp: DDL on a recorded table, checked before it runs (ddl_guard.cpp).
#pragma once

extern "C" {
#include "postgres.h"
#include "nodes/plannodes.h"
}

namespace bemi {

// Called before every utility statement runs (capture.cpp): refuses, by throwing, what would make
// the trail incomplete without a trace; records in bemi.gaps what is allowed.
void GuardDdl(PlannedStmt *pstmt, const char *query_string);

} // namespace bemi
