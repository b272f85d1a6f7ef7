// chain.hpp: the hash chain over bemi.changes (issue 15, tamper evidence), shared by the worker
// that writes it (src/worker/batch.cpp, multi_insert.cpp) and bemi_verify that checks it
// (src/chain/verify.cpp). C++ only.
//
// Every change recorded with the chain carries hash and previous_id:
//   digest = SHA-256(the change's content: every column a user sees but id and created_at)
//   hash   = SHA-256(previous hash || id || created_at || digest)
// where previous hash is the hash of the change previous_id names (the one written before it,
// in id order), or 32 zero bytes for the first change of a chain (previous_id NULL). The digest
// can be computed before a change has an id, in parallel, by whoever writes it; only the link, one
// small hash per change, is computed in the writers' order (the ids turn).
//
// Changes a destination receives from other servers (source_system_id not NULL) are not chained
// there: they are written by the sources' workers, with ids the destination draws.
//
// The content's encoding (ChainDigest in hash.cpp) is canonical: it is made from the values as
// bemi.changes stores them, so bemi_verify reproduces it from a stored row, and it survives a dump
// and restore (a jsonb's binary form is one per value: sorted keys, no duplicates, numerics in
// their one normal form; texts are their bytes).
#pragma once

extern "C" {
#include "postgres.h"

#include "access/xlogdefs.h"
#include "common/cryptohash.h"
#include "datatype/timestamp.h"
#if PG_VERSION_NUM >= 160000
#include "varatt.h" /* VARDATA_ANY and friends, out of postgres.h since 16 */
#endif
}

namespace bemi {

constexpr int kChainHashLen = 32;

// The content of one change as the digest covers it, in the order of bemi.changes' columns.
// Varlenas may have short or long headers (not compressed, not external): detoast first.
struct ChainContent {
	const struct varlena *primary_key; // nullptr: NULL
	const struct varlena *before, *after, *context;
	const char *database; // the database's name, database_len bytes
	size_t database_len;
	const struct varlena *schema, *table, *operation;
	TimestampTz committed_at;
	int64 transaction_id;
	XLogRecPtr position;
	bool table_oid_null;
	Oid table_oid;
	const struct varlena *source_system_id; // nullptr: NULL (the worker's own changes, the chained ones)
};

// The last change of the chain as the next one links to it.
struct ChainHead {
	bool valid;   // known (else read it from the trail before linking)
	bool genesis; // no chained change yet: the next one starts the chain (previous_id NULL)
	int64 id;
	uint8 hash[kChainHashLen];
};

// C-style, inside PgCall only: the context comes from pg_cryptohash_create (palloc'd, tracked by
// the current resource owner), so make it and free it in one transaction.
pg_cryptohash_ctx *ChainHasher();
void ChainDigest(pg_cryptohash_ctx *ctx, const ChainContent &content, uint8 *digest);
void ChainLink(pg_cryptohash_ctx *ctx, const uint8 *previous, int64 id, TimestampTz created_at,
               const uint8 *digest, uint8 *hash);

} // namespace bemi
