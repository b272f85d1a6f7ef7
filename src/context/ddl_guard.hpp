// ddl_guard.hpp: DDL on a recorded table, checked before it runs (ddl_guard.cpp).
#pragma once

#include <string>

extern "C" {
#include "postgres.h"
#include "nodes/plannodes.h"
}

namespace bemi {

// Called before every utility statement runs (capture.cpp): refuses, by throwing, what would make
// the trail incomplete without a trace; records in bemi.gaps what is allowed.
void GuardDdl(PlannedStmt *pstmt, const char *query_string);

// Is this a table whose changes bemi records, persistence aside (bemi._user_tables()' rule)?
// Raw PostgreSQL calls: inside PgCall only.
bool IsUserTable(Oid relid);

// One row in bemi.gaps about table `relid` and this statement (its role, its text), written as the
// extension's owner in the statement's own transaction; nothing when bemi is not installed. For
// the trail's protection (protect.cpp): a modification of the trail a superuser allowed.
void RecordTrailGap(Oid relid, const PlannedStmt *pstmt, const char *query_string, const std::string &reason);

} // namespace bemi
