/*
 * plugin.h: what the output plugin's C shim (plugin_shim.c) calls in the C++ core (plugin.cpp).
 * Each function enters C++ through bemi::Enter; an error comes back as a PostgreSQL ERROR.
 */
#ifndef BEMI_DECODING_PLUGIN_H
#define BEMI_DECODING_PLUGIN_H

#include "postgres.h"

#include "replication/logical.h"
#include "replication/output_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

extern void BemiPluginStartup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init);
extern void BemiPluginBegin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn);
extern void BemiPluginCommit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn);
extern void BemiPluginChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
							 ReorderBufferChange *change);
extern void BemiPluginTruncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
							   Relation relations[], ReorderBufferChange *change);
extern void BemiPluginMessage(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
							  bool transactional, const char *prefix, Size size, const char *message);
extern bool BemiPluginFilterByOrigin(LogicalDecodingContext *ctx, RepOriginId origin_id);

/* bemi_json_is_text(regtype): the trusted-cast rule, for SQL. */
extern bool BemiJsonIsText(Oid type);

#ifdef __cplusplus
}
#endif

#endif
