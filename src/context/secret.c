/*
 * secret.c: the key that authenticates bemi's own context messages.
 *
 * Any role can call pg_logical_emit_message, so a context message proves nothing by its prefix.
 * bemi's backend code signs the message it emits (HMAC-SHA256 over the top-level transaction id
 * and the payload) with a key only server processes hold; the output plugin accepts the `_bemi`
 * identity of a message only when the MAC verifies.
 *
 * The key is 32 random bytes, loaded by the postmaster (shmem startup hook) into shared memory
 * from $PGDATA/bemi_secret, created there (mode 0600, written durably) on the first start. Being
 * a file in the data directory, it outlives restarts (WAL written before a restart still
 * verifies) and is copied by pg_basebackup (a standby decodes with the same key). Its readers are
 * exactly those who can read the data directory, who can read everything anyway.
 */
#include "postgres.h"

#include "bemi/bemi.h"
#include "storage/lwlock.h"
#include "bemi/secret.h"

#include "common/hmac.h"
#include "common/sha2.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct BemiSecret
{
	bool loaded;
	uint8 key[BEMI_SECRET_LEN];
} BemiSecret;

static BemiSecret *bemi_secret = NULL;

void
BemiSecretShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(BemiSecret)));
}

/* Reads the key file; false when it does not exist. Any other problem stops the server. */
static bool
ReadSecretFile(uint8 *key)
{
	int fd = OpenTransientFile(BEMI_SECRET_FILE, O_RDONLY | PG_BINARY);
	uint8 extra;
	int got;

	if (fd < 0)
	{
		if (errno == ENOENT)
			return false;
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not open bemi key file \"%s\": %m", BEMI_SECRET_FILE),
				 errhint("The server must be able to read this file in its data directory.")));
	}
	got = read(fd, key, BEMI_SECRET_LEN);
	if (got != BEMI_SECRET_LEN || read(fd, &extra, 1) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("bemi key file \"%s\" is damaged", BEMI_SECRET_FILE),
				 errdetail("It must hold exactly %d bytes.", BEMI_SECRET_LEN),
				 errhint("Restore it from a backup of this data directory. If none exists, remove it: a new key "
						 "is made at the next start, and identities in WAL not yet decoded are then not recorded.")));
	CloseTransientFile(fd);
	return true;
}

/* A new random key, written to a temporary file, synced and renamed into place. */
static void
CreateSecretFile(uint8 *key)
{
	const char *tmp = BEMI_SECRET_FILE ".tmp";
	int fd;

	if (!pg_strong_random(key, BEMI_SECRET_LEN))
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate the bemi key"),
				 errhint("The server found no source of strong random numbers.")));
	fd = OpenTransientFilePerm(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not create bemi key file \"%s\": %m", tmp),
				 errhint("The server must be able to write to its data directory.")));
	errno = 0;
	if (write(fd, key, BEMI_SECRET_LEN) != BEMI_SECRET_LEN || pg_fsync(fd) != 0)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(FATAL,
				(errcode_for_file_access(),
				 errmsg("could not write bemi key file \"%s\": %m", tmp),
				 errhint("Free space in the data directory and start the server again.")));
	}
	CloseTransientFile(fd);
	/* durable_rename syncs the file and the directory. */
	durable_rename(tmp, BEMI_SECRET_FILE, FATAL);
}

/* Postmaster (and EXEC_BACKEND children): attach, and load the key once. */
void
BemiSecretShmemStartup(void)
{
	bool found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bemi_secret = ShmemInitStruct("bemi secret", sizeof(BemiSecret), &found);
	if (!found)
	{
		memset(bemi_secret, 0, sizeof(BemiSecret));
		if (!ReadSecretFile(bemi_secret->key))
			CreateSecretFile(bemi_secret->key);
		bemi_secret->loaded = true;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* HMAC-SHA256(key, tag || xid (big-endian) || payload). False on a library failure. */
static bool
ComputeMac(TransactionId top_xid, const char *payload, Size payload_len, uint8 *mac)
{
	pg_hmac_ctx *ctx;
	uint8 xid[4];
	bool ok;

	if (bemi_secret == NULL || !bemi_secret->loaded)
		return false;
	xid[0] = (top_xid >> 24) & 0xff;
	xid[1] = (top_xid >> 16) & 0xff;
	xid[2] = (top_xid >> 8) & 0xff;
	xid[3] = top_xid & 0xff;
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, bemi_secret->key, BEMI_SECRET_LEN) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) BEMI_SIGNED_TAG, BEMI_SIGNED_TAG_LEN) == 0 &&
		pg_hmac_update(ctx, xid, sizeof(xid)) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) payload, payload_len) == 0 &&
		pg_hmac_final(ctx, mac, PG_SHA256_DIGEST_LENGTH) == 0;
	pg_hmac_free(ctx);
	return ok;
}

static void
MacToHex(const uint8 *mac, char *hex)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
	{
		hex[2 * i] = digits[mac[i] >> 4];
		hex[2 * i + 1] = digits[mac[i] & 0xf];
	}
}

char *
BemiSignMessage(TransactionId top_xid, const char *payload, int payload_len, int *message_len)
{
	uint8 mac[PG_SHA256_DIGEST_LENGTH];
	char *message;

	if (!ComputeMac(top_xid, payload, payload_len, mac))
		return NULL;
	message = palloc(BEMI_SIGNED_HEADER_LEN + payload_len + 1);
	memcpy(message, BEMI_SIGNED_TAG, BEMI_SIGNED_TAG_LEN);
	MacToHex(mac, message + BEMI_SIGNED_TAG_LEN);
	message[BEMI_SIGNED_HEADER_LEN - 1] = ':';
	memcpy(message + BEMI_SIGNED_HEADER_LEN, payload, payload_len);
	message[BEMI_SIGNED_HEADER_LEN + payload_len] = '\0';
	*message_len = BEMI_SIGNED_HEADER_LEN + payload_len;
	return message;
}

bool
BemiVerifyMessage(TransactionId top_xid, const char *message, Size size, const char **payload, Size *payload_len)
{
	uint8 mac[PG_SHA256_DIGEST_LENGTH];
	char expected[BEMI_MAC_HEX_LEN];
	uint8 diff = 0;

	*payload = message;
	*payload_len = size;
	if (size < BEMI_SIGNED_HEADER_LEN || memcmp(message, BEMI_SIGNED_TAG, BEMI_SIGNED_TAG_LEN) != 0 ||
		message[BEMI_SIGNED_HEADER_LEN - 1] != ':')
		return false;
	*payload = message + BEMI_SIGNED_HEADER_LEN;
	*payload_len = size - BEMI_SIGNED_HEADER_LEN;
	if (!ComputeMac(top_xid, *payload, *payload_len, mac))
		return false;
	MacToHex(mac, expected);
	/* Constant time: how much of a forged MAC matched must not show in timing. */
	for (int i = 0; i < BEMI_MAC_HEX_LEN; i++)
		diff |= expected[i] ^ message[BEMI_SIGNED_TAG_LEN + i];
	return diff == 0;
}

/*
 * The key of the masked-value hashes of one database: HMAC(secret, "bemi:mask:1:" || OID). Its
 * own tag keeps it apart from the message MACs ("bemi:1:" || xid || payload). Cached per process.
 */
static bool
MaskKey(Oid database, uint8 *key)
{
	static Oid cached_database = InvalidOid;
	static uint8 cached_key[PG_SHA256_DIGEST_LENGTH];
	static const char tag[] = "bemi:mask:1:";
	pg_hmac_ctx *ctx;
	uint8 oid[4];
	bool ok;

	if (OidIsValid(cached_database) && cached_database == database)
	{
		memcpy(key, cached_key, PG_SHA256_DIGEST_LENGTH);
		return true;
	}
	if (bemi_secret == NULL || !bemi_secret->loaded)
		return false;
	oid[0] = (database >> 24) & 0xff;
	oid[1] = (database >> 16) & 0xff;
	oid[2] = (database >> 8) & 0xff;
	oid[3] = database & 0xff;
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, bemi_secret->key, BEMI_SECRET_LEN) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) tag, sizeof(tag) - 1) == 0 &&
		pg_hmac_update(ctx, oid, sizeof(oid)) == 0 &&
		pg_hmac_final(ctx, key, PG_SHA256_DIGEST_LENGTH) == 0;
	pg_hmac_free(ctx);
	if (ok)
	{
		memcpy(cached_key, key, PG_SHA256_DIGEST_LENGTH);
		cached_database = database;
	}
	return ok;
}

bool
BemiMaskHash(Oid database, const char *value, Size len, char *hex)
{
	uint8 key[PG_SHA256_DIGEST_LENGTH];
	uint8 mac[PG_SHA256_DIGEST_LENGTH];
	pg_hmac_ctx *ctx;
	bool ok;

	if (!MaskKey(database, key))
		return false;
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, key, sizeof(key)) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) value, len) == 0 &&
		pg_hmac_final(ctx, mac, sizeof(mac)) == 0;
	pg_hmac_free(ctx);
	if (!ok)
		return false;
	MacToHex(mac, hex);
	hex[BEMI_MAC_HEX_LEN] = '\0';
	return true;
}
