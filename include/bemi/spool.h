/*
 * spool.h: an append-then-read byte stream that keeps its head in memory and spills the rest to
 * a file, so the worker's memory does not depend on transaction size (worker/spool.cpp).
 */
#ifndef BEMI_SPOOL_H
#define BEMI_SPOOL_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct BemiSpool BemiSpool;

/* Functions return false on failure and leave a message in *error (static storage). */
extern BemiSpool *BemiSpoolCreate(const char *path, size_t memory_limit, const char **error);
extern bool BemiSpoolAppend(BemiSpool *spool, const void *data, size_t size, const char **error);
/* Reads exactly size bytes; *eof is set at the end of what was appended. */
extern bool BemiSpoolRead(BemiSpool *spool, void *data, size_t size, bool *eof, const char **error);
extern size_t BemiSpoolBytes(const BemiSpool *spool);
/* Forget everything: the next append starts a new stream. */
extern bool BemiSpoolReset(BemiSpool *spool, const char **error);
extern void BemiSpoolDestroy(BemiSpool *spool);

#ifdef __cplusplus
}
#endif

#endif
