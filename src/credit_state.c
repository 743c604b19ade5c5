/*
 * credit_state.c: what the current transaction holds of a role's credit
 * slots (sql: credit_slot_for, credit_gather).
 *
 * Kept here, not in settings: a submit's triggers run as the extension
 * owner, and everything they set is rolled back when the submit returns
 * (privileged.c).  Two facts, both for the current transaction only:
 * whether it holds a slot (then a gather must not wait: deadlock), and the
 * slot it reserves in with its free credits (its next submits read no slot
 * again).  A subtransaction that aborts releases the row locks it took, so
 * its abort forgets the slot (the next submit locks one again); "holds a
 * slot" stays, which only makes a gather more careful.
 *
 * And a third: each role's available credits as this transaction's
 * settles (charges and releases) left them, for their ledger entries.  Read
 * once, then moved by each settle, so a statement that settles n rows (a
 * bulk cancel, of one role or several) sums each role's unfolded deltas
 * once, not n times (n^2).  Any
 * other change of the role's credits in this transaction (a submit, a
 * gather, a grant: each notes its slot state) and a subtransaction's abort
 * make the next settle read them again.
 */
#include "postgres.h"

#include "credits.h"

#include "access/xact.h"
#include "fmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(docextract_credit_slot_held);
PG_FUNCTION_INFO_V1(docextract_credit_slot_cache);
PG_FUNCTION_INFO_V1(docextract_credit_slot_note);
PG_FUNCTION_INFO_V1(docextract_credit_settle_known);
PG_FUNCTION_INFO_V1(docextract_credit_settle_note);

static LocalTransactionId held_in = InvalidLocalTransactionId;
static LocalTransactionId cached_in = InvalidLocalTransactionId;
static char cache[128];
/* Roles settled in this transaction (a statement may settle several's rows, interleaved). */
#define SETTLED_ROLES 16
static LocalTransactionId settled_in = InvalidLocalTransactionId;
static int	nsettled;
static Oid	settled_role[SETTLED_ROLES];
static int64 settled_available[SETTLED_ROLES];

static void
forget_on_subabort(SubXactEvent event, SubTransactionId mySubid,
				   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		cached_in = settled_in = InvalidLocalTransactionId;
}

static void
register_subabort(void)
{
	static bool registered = false;

	if (!registered)
		RegisterSubXactCallback(forget_on_subabort, NULL);
	registered = true;
}

/* Does this transaction hold one of a role's credit slots? */
Datum
docextract_credit_slot_held(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(held_in == MyProc->lxid);
}

/* "role,slot,free,available,every slot" of this transaction's slot, or NULL. */
Datum
docextract_credit_slot_cache(PG_FUNCTION_ARGS)
{
	if (cached_in != MyProc->lxid)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(cache));
}

/* Is a slot of this transaction's remembered (credit_slot_cache() not NULL)? */
bool
credit_slot_cached(void)
{
	return cached_in == MyProc->lxid;
}

/* This transaction holds a slot; remember it as given (NULL: none remembered). */
void
credit_slot_remember_state(const char *state)
{
	register_subabort();
	held_in = MyProc->lxid;
	cached_in = settled_in = InvalidLocalTransactionId;
	if (state == NULL)
		return;
	if (strlen(state) >= sizeof(cache))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("credit slot state too long")));
	strlcpy(cache, state, sizeof(cache));
	cached_in = MyProc->lxid;
}

Datum
docextract_credit_slot_note(PG_FUNCTION_ARGS)
{
	credit_slot_remember_state(PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* Role r's place among the roles settled in this transaction, or -1. */
static int
settled_index(Oid role)
{
	if (settled_in != MyProc->lxid)
		nsettled = 0;
	settled_in = MyProc->lxid;
	for (int i = 0; i < nsettled; i++)
		if (settled_role[i] == role)
			return i;
	return -1;
}

/* Role r's available credits moved by change, if known here; else NULL. */
Datum
docextract_credit_settle_known(PG_FUNCTION_ARGS)
{
	int			i = settled_index(PG_GETARG_OID(0));

	if (i < 0)
		PG_RETURN_NULL();
	settled_available[i] += PG_GETARG_INT64(1);
	PG_RETURN_INT64(settled_available[i]);
}

/* Role r's available credits, just read: remember them; returns them. */
Datum
docextract_credit_settle_note(PG_FUNCTION_ARGS)
{
	int			i = settled_index(PG_GETARG_OID(0));

	register_subabort();
	if (i < 0)
		i = nsettled < SETTLED_ROLES ? nsettled++ : (int) (PG_GETARG_OID(0) % SETTLED_ROLES);
	settled_role[i] = PG_GETARG_OID(0);
	settled_available[i] = PG_GETARG_INT64(1);
	PG_RETURN_INT64(settled_available[i]);
}
