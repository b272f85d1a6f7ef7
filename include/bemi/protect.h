/*
 * protect.h: the trail's protection (src/context/protect.cpp), called from the context area's
 * shims (capture_shim.c: ExecutorStart; protect_shim.c: object access, fmgr and cache hooks).
 * Each enters C++ through bemi::Enter: a refusal comes back as an ERROR.
 */
#ifndef BEMI_PROTECT_H
#define BEMI_PROTECT_H

#include "postgres.h"

#include "nodes/nodes.h"

#ifdef __cplusplus
extern "C" {
#endif

struct PlannedStmt;

/* Installs the hooks (from _PG_init). */
extern void BemiProtectInit(void);

/* ExecutorStart of a write: refuses (or records, under bemi.allow_trail_changes) a write of the trail. */
extern void BemiGuardTrailWrites(struct PlannedStmt *pstmt, const char *source_text, CmdType operation);

/* OAT_DROP of a relation, schema or extension: refuses dropping the trail while it holds changes. */
extern void BemiGuardDrop(Oid class_id, Oid object_id);

/* Before DROP DATABASE: refuses dropping a database bemi records, unless bemi.allow_drop. */
extern void BemiGuardDropDatabase(const char *dbname);

/* Start (true) or end of a call of a function with SET clauses: counts bemi's retention functions. */
extern void BemiRetentionCall(Oid fn_oid, bool start);

/* Forget cached OIDs (syscache invalidation); at the end of a (sub)transaction, what it wrote
 * under bemi.allow_trail_changes, and after an abort the retention count. */
extern void BemiProtectForget(bool namespaces, bool functions);
extern void BemiProtectReset(bool abort);

/* bemi.allow_trail_changes: set per session only (check hook, source is a GucSource); on, the
 * session's own changes are left out of the trail (assign hook). */
extern bool BemiAllowTrailChangesCheck(bool value, int source);
extern void BemiAllowTrailChangesAssign(bool value);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_PROTECT_H */
