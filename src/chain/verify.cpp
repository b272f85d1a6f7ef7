// verify.cpp: bemi_verify(since, until), the check of the hash chain over bemi.changes
// (include/bemi/chain.hpp). Runs in the backend of whoever calls it, with the caller's rights
// (reading the trail is bemi_reader's right): it reads bemi.changes in id order, computes every
// change's hash again from its stored values and the hash before it, and stops at the first change
// that does not fit:
//   altered    its content (or id, or created_at) is not what its hash covers;
//   removed    the change its successor names as previous_id is missing (and no retention anchor,
//              bemi.chain_anchors, says it was cut);
//   inserted   a change that is not in the chain: no hash after the chain began, or one its
//              successor skips;
//   reordered  its content is the next change's (two changes swapped).
// Changes without hash before the first chained one are from before 0.5.0: not checked. Changes
// received from other servers (source_system_id, on a destination) are not in this chain. The check
// cannot see changes removed after the last one read, nor a trail rewritten whole with hashes
// computed again: comparing bemi_chain_head() with a copy published elsewhere does
// (docs/guarantees.md).
//
// One PgCall holds the whole scan (SPI, a cursor, plain C-style code): nothing here owns a
// destructor.
#include "../fn/fn.h"

#include "bemi/chain.hpp"
#include "bemi/guard.hpp"

#include <cstring>

extern "C" {
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
}

namespace bemi {
namespace {

constexpr long kFetch = 5000;

#define BEMI_CHAIN_COLUMNS                                                                                \
	"SELECT id, previous_id, hash, created_at, primary_key, \"before\", \"after\", context, database, schema," \
	" \"table\", operation, committed_at, transaction_id, position, table_oid, source_system_id FROM bemi.changes"

// One change as the check reads it; the varlenas detoasted in the current memory context.
struct Change {
	int64 id;
	bool previous_null;
	int64 previous_id;
	const uint8 *hash; // nullptr: NULL
	size_t hash_len;
	TimestampTz created_at;
	ChainContent content;
};

constexpr int kColumns = 17;

// The row's columns, deformed once (SPI_getbinval walks the tuple again for each column).
void Read(HeapTuple tuple, TupleDesc desc, Change *c) {
	Datum v[kColumns];
	bool n[kColumns];

	if (desc->natts != kColumns)
		elog(ERROR, "bemi_verify: unexpected row of %d columns", desc->natts);
	heap_deform_tuple(tuple, desc, v, n);
	auto bytes = [&](int i) -> const struct varlena * {
		return n[i] ? nullptr : pg_detoast_datum_packed(reinterpret_cast<struct varlena *>(DatumGetPointer(v[i])));
	};
	c->id = DatumGetInt64(v[0]);
	c->previous_null = n[1];
	c->previous_id = n[1] ? 0 : DatumGetInt64(v[1]);
	const struct varlena *hash = bytes(2);
	c->hash = hash ? reinterpret_cast<const uint8 *>(VARDATA_ANY(hash)) : nullptr;
	c->hash_len = hash ? VARSIZE_ANY_EXHDR(hash) : 0;
	c->created_at = n[3] ? 0 : DatumGetTimestampTz(v[3]);
	ChainContent &t = c->content;
	t.primary_key = bytes(4);
	t.before = bytes(5);
	t.after = bytes(6);
	t.context = bytes(7);
	const struct varlena *database = bytes(8);
	t.database = database ? VARDATA_ANY(database) : nullptr;
	t.database_len = database ? VARSIZE_ANY_EXHDR(database) : 0;
	t.schema = bytes(9);
	t.table = bytes(10);
	t.operation = bytes(11);
	t.committed_at = n[12] ? 0 : DatumGetTimestampTz(v[12]);
	t.transaction_id = n[13] ? 0 : DatumGetInt64(v[13]);
	t.position = n[14] ? 0 : DatumGetLSN(v[14]);
	t.table_oid_null = n[15];
	t.table_oid = n[15] ? InvalidOid : DatumGetObjectId(v[15]);
	t.source_system_id = bytes(16);
}

// The hash `c` should have after `previous`.
void Expected(pg_cryptohash_ctx *ctx, const uint8 *previous, const Change &c, uint8 *hash) {
	uint8 digest[kChainHashLen];
	ChainDigest(ctx, c.content, digest);
	ChainLink(ctx, previous, c.id, c.created_at, digest, hash);
}

bool HashIs(const Change &c, const uint8 *hash) {
	return c.hash != nullptr && c.hash_len == kChainHashLen && memcmp(c.hash, hash, kChainHashLen) == 0;
}

// One value of a one-column query with one bigint argument (or none); false if no row or NULL.
bool QueryValue(const char *sql, int nargs, Oid *types, Datum *args, Datum *value) {
	int rc = SPI_execute_with_args(sql, nargs, types, args, nullptr, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "bemi: %s failed: %s", sql, SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;
	bool isnull;
	*value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull;
}

// An anchor says the chain was cut before `id` (its predecessor `previous` removed by retention):
// the hash `previous` had.
bool Anchored(int64 id, int64 previous, uint8 *hash) {
	Oid types[2] = {INT8OID, INT8OID};
	Datum args[2] = {Int64GetDatum(id), Int64GetDatum(previous)};
	Datum value;

	if (!QueryValue("SELECT previous_hash FROM bemi.chain_anchors WHERE id OPERATOR(pg_catalog.=) $1"
	                " AND previous_id OPERATOR(pg_catalog.=) $2",
	                2, types, args, &value))
		return false;
	bytea *bytes = DatumGetByteaPP(value);
	if (VARSIZE_ANY_EXHDR(bytes) != kChainHashLen)
		return false;
	memcpy(hash, VARDATA_ANY(bytes), kChainHashLen);
	return true;
}

// The hash a change with previous_id `previous` links to: the anchor retention left for `id`
// when it cut the chain there, or that change's own. False if neither exists.
bool PreviousHash(int64 id, int64 previous, uint8 *hash) {
	Oid types[1] = {INT8OID};
	Datum args[1] = {Int64GetDatum(previous)};
	Datum value;

	if (Anchored(id, previous, hash))
		return true;
	if (!QueryValue("SELECT hash FROM bemi.changes WHERE id OPERATOR(pg_catalog.=) $1", 1, types, args, &value))
		return false;
	bytea *bytes = DatumGetByteaPP(value);
	if (VARSIZE_ANY_EXHDR(bytes) != kChainHashLen)
		return false;
	memcpy(hash, VARDATA_ANY(bytes), kChainHashLen);
	return true;
}

// Does c's hash fit after the change it names as previous (or the chain's start)?
bool Genuine(pg_cryptohash_ctx *ctx, const Change &c) {
	static const uint8 kZero[kChainHashLen] = {};
	uint8 previous[kChainHashLen], hash[kChainHashLen];

	if (!c.previous_null && !PreviousHash(c.id, c.previous_id, previous))
		return false;
	Expected(ctx, c.previous_null ? kZero : previous, c, hash);
	return HashIs(c, hash);
}

// The change after `id`, if any (read into the current memory context).
bool NextChange(int64 id, Change *next) {
	Oid types[1] = {INT8OID};
	Datum args[1] = {Int64GetDatum(id)};
	int rc = SPI_execute_with_args(BEMI_CHAIN_COLUMNS " WHERE id OPERATOR(pg_catalog.>) $1 ORDER BY id LIMIT 1", 1,
	                               types, args, nullptr, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "bemi: reading the change after %lld failed: %s", static_cast<long long>(id),
		     SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;
	Read(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, next);
	return true;
}

void Found(BemiVerifyProblem *out, int64 id, const char *reason, char *detail) {
	out->found = true;
	out->id = id;
	out->reason = reason;
	out->detail = detail;
}

// Why `c`'s hash does not fit after (previous_id, previous): a change inserted (its successor
// links to `previous` past it), two changes swapped (its hash covers the next one's content), or
// its own content altered. C-style.
void Mismatch(pg_cryptohash_ctx *ctx, const Change &c, bool has_previous, int64 previous_id, const uint8 *previous,
              BemiVerifyProblem *out) {
	Change next;
	if (NextChange(c.id, &next)) {
		if (has_previous && !next.previous_null && next.previous_id == previous_id) {
			Found(out, c.id, "inserted",
			      psprintf("change %lld does not fit the chain and change %lld links past it to change %lld",
			               static_cast<long long>(c.id), static_cast<long long>(next.id),
			               static_cast<long long>(previous_id)));
			return;
		}
		Change moved = next;
		moved.id = c.id;
		uint8 hash[kChainHashLen];
		Expected(ctx, previous, moved, hash);
		if (HashIs(c, hash) || HashIs(next, hash)) {
			Found(out, c.id, "reordered",
			      psprintf("change %lld holds what change %lld held, and the other way round: the two were swapped",
			               static_cast<long long>(c.id), static_cast<long long>(next.id)));
			return;
		}
	}
	Found(out, c.id, "altered",
	      psprintf("change %lld is not what its hash covers: a value, its id or its created_at was changed",
	               static_cast<long long>(c.id)));
}

void Verify(TimestampTz since, TimestampTz until, BemiVerifyProblem *out) {
	Oid types[2] = {INT8OID, INT8OID};
	Oid ts_type[1] = {TIMESTAMPTZOID};
	Datum bound;
	Datum args[2];
	static const uint8 kZero[kChainHashLen] = {};

	out->found = false;
	SPI_connect();
	// The id range of the changes committed in [since, until].
	args[0] = TimestampTzGetDatum(since);
	if (!(TIMESTAMP_IS_NOBEGIN(since)
	          ? QueryValue("SELECT pg_catalog.min(id) FROM bemi.changes", 0, nullptr, nullptr, &bound)
	          : QueryValue("SELECT pg_catalog.min(id) FROM bemi.changes WHERE committed_at OPERATOR(pg_catalog.>=) $1",
	                       1, ts_type, args, &bound))) {
		SPI_finish();
		return;
	}
	int64 lo = DatumGetInt64(bound);
	args[0] = TimestampTzGetDatum(until);
	if (!(TIMESTAMP_IS_NOEND(until)
	          ? QueryValue("SELECT pg_catalog.max(id) FROM bemi.changes", 0, nullptr, nullptr, &bound)
	          : QueryValue("SELECT pg_catalog.max(id) FROM bemi.changes WHERE committed_at OPERATOR(pg_catalog.<=) $1",
	                       1, ts_type, args, &bound))) {
		SPI_finish();
		return;
	}
	int64 hi = DatumGetInt64(bound);

	args[0] = Int64GetDatum(lo);
	args[1] = Int64GetDatum(hi);
	Portal portal = SPI_cursor_open_with_args(
	    nullptr,
	    BEMI_CHAIN_COLUMNS " WHERE id OPERATOR(pg_catalog.>=) $1 AND id OPERATOR(pg_catalog.<=) $2 ORDER BY id", 2,
	    types, args, nullptr, true, CURSOR_OPT_FAST_PLAN);
	pg_cryptohash_ctx *ctx = ChainHasher();
	MemoryContext row_context = AllocSetContextCreate(CurrentMemoryContext, "bemi_verify row", ALLOCSET_DEFAULT_SIZES);
	MemoryContext caller = CurrentMemoryContext;
	bool started = false;      // a chained change was read: every later one must be chained
	bool has_previous = false; // previous_id / previous: the change the next one must link to
	int64 previous_id = 0;
	uint8 previous[kChainHashLen];

	while (!out->found) {
		SPI_cursor_fetch(portal, true, kFetch);
		if (SPI_processed == 0)
			break;
		SPITupleTable *table = SPI_tuptable;
		uint64 fetched = SPI_processed; // the lookups below run queries of their own
		for (uint64 r = 0; r < fetched && !out->found; r++) {
			Change c;
			CHECK_FOR_INTERRUPTS();
			MemoryContextReset(row_context);
			MemoryContextSwitchTo(row_context);
			Read(table->vals[r], table->tupdesc, &c);
			if (c.content.source_system_id != nullptr)
				continue; // received from another server (a destination's): not in this chain
			if (c.hash == nullptr) {
				if (started)
					Found(out, c.id, "inserted",
					      psprintf("change %lld has no hash: it was written outside the chain",
					               static_cast<long long>(c.id)));
				else
					continue; // from before the chain (0.4.0 and older)
			} else if (!started) {
				// The first chained change read: its predecessor is the chain's start, a change
				// before the range, or one retention removed (an anchor).
				if (c.previous_null) {
					memcpy(previous, kZero, kChainHashLen);
				} else if (!PreviousHash(c.id, c.previous_id, previous)) {
					Found(out, c.previous_id, "removed",
					      psprintf("change %lld, which change %lld follows, is missing",
					               static_cast<long long>(c.previous_id), static_cast<long long>(c.id)));
				}
				previous_id = c.previous_null ? 0 : c.previous_id;
				has_previous = !c.previous_null;
				started = true;
			} else if (c.previous_null || c.previous_id != previous_id) {
				if (!c.previous_null && Anchored(c.id, c.previous_id, previous)) {
					previous_id = c.previous_id; // a cut made by retention
				} else if (!c.previous_null && c.previous_id > previous_id) {
					Found(out, c.previous_id, "removed",
					      psprintf("change %lld, which change %lld follows, is missing",
					               static_cast<long long>(c.previous_id), static_cast<long long>(c.id)));
				} else if (Genuine(ctx, c)) {
					// c links to what it names: the change before it is the intruder.
					Found(out, previous_id, "inserted",
					      psprintf("change %lld is not in the chain: change %lld after it links to %s",
					               static_cast<long long>(previous_id), static_cast<long long>(c.id),
					               c.previous_null ? "nothing" : psprintf("%lld", static_cast<long long>(c.previous_id))));
				} else {
					Found(out, c.id, "inserted",
					      psprintf("change %lld is not in the chain: it claims to follow change %s, which change "
					               "%lld follows",
					               static_cast<long long>(c.id),
					               c.previous_null ? "nothing" : psprintf("%lld", static_cast<long long>(c.previous_id)),
					               static_cast<long long>(previous_id)));
				}
			}
			if (out->found || c.hash == nullptr)
				break;
			uint8 hash[kChainHashLen];
			Expected(ctx, c.previous_null ? kZero : previous, c, hash);
			if (!HashIs(c, hash)) {
				Mismatch(ctx, c, has_previous, previous_id, c.previous_null ? kZero : previous, out);
				break;
			}
			has_previous = true;
			previous_id = c.id;
			memcpy(previous, c.hash, kChainHashLen);
		}
		MemoryContextSwitchTo(caller);
		if (!out->found)
			SPI_freetuptable(table);
	}
	MemoryContextSwitchTo(caller);
	SPI_cursor_close(portal);
	pg_cryptohash_free(ctx);
	// The answer outlives SPI: SPI_palloc'd in the function's context.
	if (out->found) {
		size_t len = strlen(out->detail) + 1;
		char *detail = static_cast<char *>(SPI_palloc(len));
		memcpy(detail, out->detail, len);
		out->detail = detail;
	}
	MemoryContextDelete(row_context);
	SPI_finish();
}

} // namespace
} // namespace bemi

extern "C" void BemiVerify(TimestampTz since, TimestampTz until, BemiVerifyProblem *out) {
	bemi::Enter([&] { bemi::PgCall([&] { bemi::Verify(since, until, out); }); });
}
