// protect.hpp: the trail's protection (protect.cpp), as the utility hook calls it (capture.cpp).
#pragma once

extern "C" {
#include "postgres.h"
#include "nodes/plannodes.h"
}

namespace bemi {

// Before a utility statement: refuses TRUNCATE of the trail and COPY into bemi.changes (unless
// bemi.allow_trail_changes, then records them in bemi.gaps), and DETACH, DROP COLUMN, ALTER
// COLUMN TYPE, SET SCHEMA or RENAME of bemi's tables or schema while the trail holds changes
// (unless bemi.allow_drop).
void GuardTrailUtility(PlannedStmt *pstmt, const char *query_string);

} // namespace bemi
