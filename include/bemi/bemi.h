/*
 * bemi.h: names and limits every part of bemi agrees on. The parts' interfaces are in their own
 * headers: settings.h, registry.h (shared memory), lifecycle.h, context.h, sink.h (the plugin's
 * contract with the worker), decoding.h, worker.h, guard.hpp (the C++/PostgreSQL boundary).
 */
#ifndef BEMI_BEMI_H
#define BEMI_BEMI_H

#define BEMI_PLUGIN_NAME "bemi"
#define BEMI_MESSAGE_PREFIX "bemi"           /* our context messages */
#define BEMI_TRIGGER_MESSAGE_PREFIX "_bemi"  /* messages from Bemi's _bemi_row_trigger_func */
#define BEMI_RESERVED_KEY "_bemi"            /* database-level identity inside a context */
/* Schema changes of recorded tables (src/context/ddl_events.cpp -> src/decoding/session_ddl.cpp):
 * signed messages whose payload starts with the tag, so that no signed context message (a JSON
 * object) can pass for one, nor one of them for a context. */
#define BEMI_DDL_MESSAGE_PREFIX "bemi_ddl"
#define BEMI_DDL_PAYLOAD_TAG "ddl:"
#define BEMI_MAX_DATABASES 64
#define BEMI_ERROR_LEN 512
/* What a mask rule (bemi_mask, issue 13) leaves of a value in images: the marker ('redact'), or
 * the prefix followed by 64 hex digits of a keyed hash ('hash', secret.h BemiMaskHash). */
#define BEMI_MASK_MARKER "[masked]"
#define BEMI_MASK_HASH_PREFIX "hmac:"

#endif /* BEMI_BEMI_H */
