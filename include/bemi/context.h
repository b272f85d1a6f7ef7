/*
 * context.h: what every backend runs (src/context): the hooks that attach context to
 * transactions and hold first writes for a new slot, and the DDL guard.
 */
#ifndef BEMI_CONTEXT_H
#define BEMI_CONTEXT_H

#include "postgres.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True in bemi's own worker: its writes carry no context and are never captured. */
extern bool bemi_is_worker;
extern void BemiContextInit(void);

struct PlannedStmt;
extern void BemiGuardDdl(struct PlannedStmt *pstmt, const char *query_string);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_CONTEXT_H */
