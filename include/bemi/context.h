/*
 * context.h: what other areas see of the context area (src/context), which every backend runs:
 * the hooks that attach context to transactions, hold first writes for a new slot and guard DDL.
 * What its C shims call in its C++ core is in context_core.h.
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

#ifdef __cplusplus
}
#endif

#endif /* BEMI_CONTEXT_H */
