/*
 * context_core.h: the calls from the context area's C shims (src/context/capture_shim.c: the SQL
 * functions, hooks and transaction callbacks) into its C++ core (src/context/capture.cpp). Each
 * enters C++ through bemi::Enter: what the core throws comes back here as an ERROR.
 */
#ifndef BEMI_CONTEXT_CORE_H
#define BEMI_CONTEXT_CORE_H

#include "postgres.h"

#include "access/xact.h"
#include "utils/jsonb.h"

#ifdef __cplusplus
extern "C" {
#endif

struct PlannedStmt;

/* bemi_set_context: NULL clears. An ERROR (not an object, too large) leaves everything as it was. */
extern void BemiSetContext(const Jsonb *context, bool is_local);

/* The context in force, or NULL. The core owns it: copy it before handing it to PostgreSQL. */
extern const Jsonb *BemiCurrentContext(void);

/*
 * ExecutorStart, before the statement starts: a top-level statement's comment, and before a
 * statement that writes, the context message (and the wait for a new capture slot).
 */
extern void BemiBeforeExecutor(const char *source_text, int stmt_location, int stmt_len, bool writes);

/*
 * ProcessUtility, before the statement runs: its comment, the context message before COPY FROM,
 * TRUNCATE and CREATE TABLE AS, the wait for a new slot, the DDL guard. True when the statement may
 * drop the bemi extension: then call BemiAfterUtility once it has run.
 */
extern bool BemiBeforeUtility(struct PlannedStmt *pstmt, const char *query_string, bool top_level);
extern void BemiAfterUtility(void);

/*
 * ProcessUtility, around the statement (src/context/ddl_events.cpp): BemiBeforeDdl notes the
 * recorded tables a DDL statement is about and returns a handle (NULL for any other statement);
 * BemiAfterDdl, once the statement ran, records what it changed; BemiAbandonDdl, when it failed.
 */
extern void *BemiBeforeDdl(struct PlannedStmt *pstmt, const char *query_string);
extern void BemiAfterDdl(void *ddl);
extern void BemiAbandonDdl(void *ddl);

/* Transaction and savepoint ends (the xact and subxact callbacks). */
extern void BemiTransactionEvent(XactEvent event);
extern void BemiSubtransactionEvent(SubXactEvent event);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_CONTEXT_CORE_H */
