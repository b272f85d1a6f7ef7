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

#include "bemi/hmac.h"
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

/* The message key, prepared once per process (the key never changes while the server runs). */
static const BemiHmacKey *
MessageKey(void)
{
	static BemiHmacKey key;
	static bool prepared = false;

	if (bemi_secret == NULL || !bemi_secret->loaded)
		return NULL;
	if (!prepared)
	{
		BemiHmacKeyInit(&key, bemi_secret->key, BEMI_SECRET_LEN);
		prepared = true;
	}
	return &key;
}

/* HMAC-SHA256(key, tag || xid (big-endian) || payload). False when this server has no key. */
static bool
ComputeMac(TransactionId top_xid, const char *payload, Size payload_len, uint8 *mac)
{
	const BemiHmacKey *key = MessageKey();
	uint8 xid[4];
	const void *parts[3];
	size_t lens[3];

	if (key == NULL)
		return false;
	xid[0] = (top_xid >> 24) & 0xff;
	xid[1] = (top_xid >> 16) & 0xff;
	xid[2] = (top_xid >> 8) & 0xff;
	xid[3] = top_xid & 0xff;
	parts[0] = BEMI_SIGNED_TAG;
	lens[0] = BEMI_SIGNED_TAG_LEN;
	parts[1] = xid;
	lens[1] = sizeof(xid);
	parts[2] = payload;
	lens[2] = payload_len;
	BemiHmac(key, 3, parts, lens, mac);
	return true;
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
 * own tag keeps it apart from the message MACs ("bemi:1:" || xid || payload). Prepared once per
 * process and database.
 */
static const BemiHmacKey *
MaskKey(Oid database)
{
	static Oid cached_database = InvalidOid;
	static BemiHmacKey cached_key;
	static const char tag[] = "bemi:mask:1:";
	const BemiHmacKey *secret = MessageKey();
	uint8 oid[4];
	uint8 derived[BEMI_HMAC_LEN];
	const void *parts[2];
	size_t lens[2];

	if (secret == NULL)
		return NULL;
	if (OidIsValid(cached_database) && cached_database == database)
		return &cached_key;
	oid[0] = (database >> 24) & 0xff;
	oid[1] = (database >> 16) & 0xff;
	oid[2] = (database >> 8) & 0xff;
	oid[3] = database & 0xff;
	parts[0] = tag;
	lens[0] = sizeof(tag) - 1;
	parts[1] = oid;
	lens[1] = sizeof(oid);
	BemiHmac(secret, 2, parts, lens, derived);
	BemiHmacKeyInit(&cached_key, derived, sizeof(derived));
	cached_database = database;
	return &cached_key;
}

bool
BemiMaskHash(Oid database, const char *value, Size len, char *hex)
{
	const BemiHmacKey *key = MaskKey(database);
	uint8 mac[BEMI_HMAC_LEN];
	const void *parts[1];
	size_t lens[1];

	if (key == NULL)
		return false;
	parts[0] = value;
	lens[0] = len;
	BemiHmac(key, 1, parts, lens, mac);
	MacToHex(mac, hex);
	hex[BEMI_MAC_HEX_LEN] = '\0';
	return true;
}
