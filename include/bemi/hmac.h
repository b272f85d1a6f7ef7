/*
 * hmac.h: HMAC-SHA256 with the key's work done once (src/context/hmac.cpp).
 *
 * pg_hmac (OpenSSL underneath) sets up a context, fetches the digest and hashes the key for every
 * MAC: under pgbench that showed as a few percent of the whole machine, paid by every writing
 * transaction (signing) and by the worker (verifying, and each hashed mask). A BemiHmacKey holds
 * SHA-256's state after the key's inner and outer blocks, so one MAC costs two short hashes.
 * Plain computation: no PostgreSQL call, no allocation, cannot fail; callable from C.
 */
#ifndef BEMI_HMAC_H
#define BEMI_HMAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BEMI_HMAC_LEN 32

typedef struct BemiHmacKey
{
	uint32_t inner[8]; /* SHA-256 state after the block key XOR ipad */
	uint32_t outer[8]; /* ... after key XOR opad */
} BemiHmacKey;

/* Prepares a key of any length (longer than a block: hashed first, as RFC 2104 says). */
extern void BemiHmacKeyInit(BemiHmacKey *key, const uint8_t *secret, size_t len);

/* HMAC-SHA256 of the concatenation of nparts parts. */
extern void BemiHmac(const BemiHmacKey *key, int nparts, const void *const *parts, const size_t *lens,
					 uint8_t mac[BEMI_HMAC_LEN]);

/*
 * SHA-256 of one buffer, by the portable code or by the CPU's SHA instructions: for the tests,
 * which compare both with PostgreSQL's sha256(). False (nothing written) when the CPU has none.
 */
extern bool BemiSha256(const uint8_t *data, size_t len, bool portable, uint8_t digest[BEMI_HMAC_LEN]);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_HMAC_H */
