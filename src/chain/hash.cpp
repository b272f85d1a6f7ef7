// hash.cpp: the chain's hashes (include/bemi/chain.hpp): a change's content digest and its link
// to the change before it. Runs in the worker and its writers (writing the chain) and in the
// backend of whoever calls bemi_verify (checking it). SHA-256 through PostgreSQL's
// pg_cryptohash: OpenSSL's, with the CPU's SHA instructions where it has them.
#include "bemi/chain.hpp"

extern "C" {
#include "common/sha2.h"
}

namespace bemi {

namespace {

void Fail(pg_cryptohash_ctx *ctx) {
	elog(ERROR, "bemi: could not compute a SHA-256 hash: %s", pg_cryptohash_error(ctx));
}

// Appends big-endian bytes of v (width bytes) to buf at *len.
void PutBig(uint8 *buf, size_t *len, uint64 v, int width) {
	for (int i = width - 1; i >= 0; i--)
		buf[(*len)++] = static_cast<uint8>(v >> (8 * i));
}

void Update(pg_cryptohash_ctx *ctx, const uint8 *data, size_t len) {
	if (pg_cryptohash_update(ctx, data, len) < 0)
		Fail(ctx);
}

// A field: its length (4 bytes, big-endian; 0xFFFFFFFF for NULL), then its bytes.
void Field(pg_cryptohash_ctx *ctx, const void *data, size_t len) {
	uint8 head[4];
	size_t n = 0;
	PutBig(head, &n, data == nullptr ? 0xFFFFFFFFu : static_cast<uint32>(len), 4);
	Update(ctx, head, n);
	if (data != nullptr && len > 0)
		Update(ctx, static_cast<const uint8 *>(data), len);
}

void Varlena(pg_cryptohash_ctx *ctx, const struct varlena *v) {
	if (v == nullptr)
		Field(ctx, nullptr, 0);
	else
		Field(ctx, VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v));
}

} // namespace

pg_cryptohash_ctx *ChainHasher() {
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	if (ctx == nullptr)
		elog(ERROR, "bemi: out of memory for a SHA-256 context");
	return ctx;
}

// Every field in column order; the fixed-width ones as fields of their width (big-endian).
void ChainDigest(pg_cryptohash_ctx *ctx, const ChainContent &c, uint8 *digest) {
	uint8 fixed[3 * (4 + 8) + 4 + 4];
	size_t n = 0;

	if (pg_cryptohash_init(ctx) < 0)
		Fail(ctx);
	Varlena(ctx, c.primary_key);
	Varlena(ctx, c.before);
	Varlena(ctx, c.after);
	Varlena(ctx, c.context);
	Field(ctx, c.database, c.database_len);
	Varlena(ctx, c.schema);
	Varlena(ctx, c.table);
	Varlena(ctx, c.operation);
	PutBig(fixed, &n, 8, 4);
	PutBig(fixed, &n, static_cast<uint64>(c.committed_at), 8);
	PutBig(fixed, &n, 8, 4);
	PutBig(fixed, &n, static_cast<uint64>(c.transaction_id), 8);
	PutBig(fixed, &n, 8, 4);
	PutBig(fixed, &n, c.position, 8);
	if (c.table_oid_null) {
		PutBig(fixed, &n, 0xFFFFFFFFu, 4);
	} else {
		PutBig(fixed, &n, 4, 4);
		PutBig(fixed, &n, c.table_oid, 4);
	}
	Update(ctx, fixed, n);
	Varlena(ctx, c.source_system_id);
	if (pg_cryptohash_final(ctx, digest, kChainHashLen) < 0)
		Fail(ctx);
}

void ChainLink(pg_cryptohash_ctx *ctx, const uint8 *previous, int64 id, TimestampTz created_at,
               const uint8 *digest, uint8 *hash) {
	uint8 buf[kChainHashLen + 8 + 8 + kChainHashLen];
	size_t n = 0;

	memcpy(buf, previous, kChainHashLen);
	n += kChainHashLen;
	PutBig(buf, &n, static_cast<uint64>(id), 8);
	PutBig(buf, &n, static_cast<uint64>(created_at), 8);
	memcpy(buf + n, digest, kChainHashLen);
	n += kChainHashLen;
	if (pg_cryptohash_init(ctx) < 0)
		Fail(ctx);
	Update(ctx, buf, n);
	if (pg_cryptohash_final(ctx, hash, kChainHashLen) < 0)
		Fail(ctx);
}

} // namespace bemi
