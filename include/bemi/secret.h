/*
 * secret.h: authenticated context messages. Only server processes hold the key, so only bemi's
 * own backend code can produce a message whose `_bemi` identity the output plugin accepts.
 *
 * A signed message is "bemi:1:" + 64 lowercase hex digits (HMAC-SHA256) + ":" + the JSON
 * payload. The MAC covers the version tag, the top-level transaction id and the payload, so a
 * message copied into another transaction does not verify.
 */
#ifndef BEMI_SECRET_H
#define BEMI_SECRET_H

#include "postgres.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BEMI_SECRET_FILE "bemi_secret"   /* in the data directory; copied by pg_basebackup */
#define BEMI_SECRET_LEN 32
#define BEMI_SIGNED_TAG "bemi:1:"
#define BEMI_SIGNED_TAG_LEN 7
#define BEMI_MAC_HEX_LEN 64
#define BEMI_SIGNED_HEADER_LEN (BEMI_SIGNED_TAG_LEN + BEMI_MAC_HEX_LEN + 1)

/*
 * secret.c stays C: it is PostgreSQL calls (shared memory, the key file) around the MACs, which
 * are computed by hmac.h with keys prepared once per process.
 * BemiSignMessage and BemiVerifyMessage may ERROR (out of memory): C++ calls them inside a PgCall.
 */
extern void BemiSecretShmemRequest(void);
extern void BemiSecretShmemStartup(void);

/* The signed message for a payload, palloc'd; NULL when this server has no key. */
extern char *BemiSignMessage(TransactionId top_xid, const char *payload, int payload_len, int *message_len);

/*
 * Does the message carry a valid MAC for this transaction? Always sets the payload: the part
 * after the header when the message has the signed form (whether the MAC is valid or not), the
 * whole message otherwise.
 */
extern bool BemiVerifyMessage(TransactionId top_xid, const char *message, Size size, const char **payload,
							  Size *payload_len);

/*
 * The keyed hash of a masked value (bemi_mask(..., 'hash')): 64 lowercase hex digits and a NUL
 * into hex, HMAC-SHA256 of the value under a key of the database derived from the secret
 * (HMAC(secret, "bemi:mask:1:" || database OID)), so equal values give equal hashes within one
 * database and nobody without the data directory can compute one. False when this server has no
 * key. Raw PostgreSQL: C++ calls it inside a PgCall.
 */
extern bool BemiMaskHash(Oid database, const char *value, Size len, char *hex);

#ifdef __cplusplus
}
#endif

#endif /* BEMI_SECRET_H */
