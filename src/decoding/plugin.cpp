// plugin.cpp: where PostgreSQL enters the decoding core. The output plugin's callbacks
// (plugin_shim.c), the image functions of decoding.h and bemi_json_is_text each cross into C++
// here through bemi::Enter, and nothing else lives in their frames.
#include "bemi/guard.hpp"

#include "image.hpp"
#include "relations.hpp"
#include "session.hpp"

extern "C" {
#include "bemi/decoding.h"
#include "plugin.h"
}

using bemi::Enter;
using bemi::PgCall;
using bemi::RelationCache;
using bemi::Session;

extern "C" void BemiPluginStartup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init) {
	Enter([&]() { Session::Start(ctx, opt); });
}

extern "C" void BemiPluginBegin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
	Enter([&]() { Session::Of(ctx).Begin(txn); });
}

extern "C" void BemiPluginCommit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn) {
	Enter([&]() { Session::Of(ctx).Commit(txn); });
}

extern "C" void BemiPluginChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel,
                                 ReorderBufferChange *change) {
	Enter([&]() { Session::Of(ctx).Change(txn, rel, change); });
}

extern "C" void BemiPluginTruncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations,
                                   Relation relations[], ReorderBufferChange *change) {
	Enter([&]() { Session::Of(ctx).Truncate(txn, nrelations, relations, change); });
}

extern "C" void BemiPluginMessage(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
                                  bool transactional, const char *prefix, Size size, const char *message) {
	Enter([&]() { Session::Of(ctx).Message(txn, lsn, transactional, prefix, size, message); });
}

extern "C" bool BemiPluginFilterByOrigin(LogicalDecodingContext *ctx, RepOriginId origin_id) {
	return Enter([&]() { return Session::Of(ctx).SkipsOrigin(origin_id); });
}

extern "C" bool BemiJsonIsText(Oid type) {
	return Enter([&]() { return PgCall([&]() { return bemi::RunsUntrustedCode(type); }); });
}

// decoding.h: the same images and keys, for C callers outside the plugin.

extern "C" Jsonb *BemiImageFromTuple(Relation rel, HeapTuple tuple, HeapTuple old_tuple) {
	return Enter([&]() {
		RelationCache &cache = RelationCache::Get();
		cache.Sweep();
		const bemi::RecordedRelation &plan = cache.Lookup(rel);
		return PgCall([&]() { return bemi::ImageOf(plan, rel, tuple, old_tuple); });
	});
}

extern "C" Jsonb *BemiIdentityImage(Relation rel, Jsonb *image) {
	return Enter([&]() { return PgCall([&]() { return bemi::IdentityImage(rel, image); }); });
}

extern "C" Jsonb *BemiEmptyImage(void) {
	return Enter([&]() { return PgCall([&]() { return bemi::EmptyImage(); }); });
}

extern "C" text *BemiPrimaryKey(Relation rel, Jsonb *image) {
	return Enter([&]() -> text * {
		if (image == nullptr || JB_ROOT_COUNT(image) == 0)
			return nullptr;
		RelationCache &cache = RelationCache::Get();
		cache.Sweep();
		const bemi::RecordedRelation &plan = cache.Lookup(rel);
		return PgCall([&]() { return bemi::PrimaryKeyText(plan, image); });
	});
}
