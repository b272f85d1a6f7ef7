/*
 * settings.h: bemi's configuration parameters (defined in src/bemi.c, documented there).
 */
#ifndef BEMI_SETTINGS_H
#define BEMI_SETTINGS_H

#include "postgres.h"

#ifdef __cplusplus
extern "C" {
#endif

extern int bemi_max_context_size;
extern bool bemi_replica_identity_full;
extern int bemi_batch_size;
extern int bemi_startup_timeout_ms;
extern bool bemi_partitions_as_root;
extern int bemi_flush_delay_ms;
extern bool bemi_allow_drop;
extern bool bemi_allow_trail_changes;
extern int bemi_writers;
extern int bemi_destination_connections;
extern char *bemi_source; /* bemi.source: read by SQL (bemi._source), kept here for SET's sake */
extern bool bemi_snapshot_on_create;

#ifdef __cplusplus
}
#endif

#endif /* BEMI_SETTINGS_H */
