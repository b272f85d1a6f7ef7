/*
 * protect_shim.c: the hooks through which every backend protects the trail (protect.cpp): the
 * object access hook (drops), the fmgr hook (bemi's retention functions are bemi's own code while
 * they run), syscache invalidation (cached OIDs) and transaction abort. Each passes its event on
 * to the C++ core and to the hook installed before bemi's.
 */
#include "postgres.h"

#include "bemi/protect.h"

#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "fmgr.h"
#include "utils/inval.h"
#include "utils/syscache.h"

static object_access_hook_type prev_object_access = NULL;
static needs_fmgr_hook_type prev_needs_fmgr = NULL;
static fmgr_hook_type prev_fmgr = NULL;

/* Every object about to be dropped, by any statement: relations, schemas, extensions are checked. */
static void
bemi_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && subId == 0 &&
		(classId == RelationRelationId || classId == NamespaceRelationId || classId == ExtensionRelationId))
		BemiGuardDrop(classId, objectId);
}

/* bemi asks for no function to be routed through the fmgr hook: those with SET clauses (all of bemi's) are. */
static bool
bemi_needs_fmgr(Oid fn_oid)
{
	return prev_needs_fmgr ? prev_needs_fmgr(fn_oid) : false;
}

static void
bemi_fmgr(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (prev_fmgr)
		prev_fmgr(event, flinfo, private);
	BemiRetentionCall(flinfo->fn_oid, event == FHET_START);
}

static void
bemi_protect_namespace_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	BemiProtectForget(true, false);
}

static void
bemi_protect_proc_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	BemiProtectForget(false, true);
}

static void
bemi_protect_xact(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		BemiProtectReset(true);
	else if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PREPARE)
		BemiProtectReset(false);
}

/* A subtransaction rolled back took its bemi.gaps rows with it: name its tables again. */
static void
bemi_protect_subxact(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		BemiProtectReset(false);
}

void
BemiProtectInit(void)
{
	prev_object_access = object_access_hook;
	object_access_hook = bemi_object_access;
	prev_needs_fmgr = needs_fmgr_hook;
	needs_fmgr_hook = bemi_needs_fmgr;
	prev_fmgr = fmgr_hook;
	fmgr_hook = bemi_fmgr;
	CacheRegisterSyscacheCallback(NAMESPACEOID, bemi_protect_namespace_changed, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, bemi_protect_proc_changed, (Datum) 0);
	RegisterXactCallback(bemi_protect_xact, NULL);
	RegisterSubXactCallback(bemi_protect_subxact, NULL);
}
