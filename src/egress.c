/*
 * egress.c: where the worker may connect on a role's behalf.
 *
 * A webhook URL is chosen by any role, and the answer to a delivery is
 * stored where that role can read it: unchecked, it is a way to probe the
 * server's network (loopback services, the cloud metadata address, private
 * ranges).  docextract.webhook_allowed_destinations lists where the webhooks
 * of roles that are not superusers may connect: CIDR ranges, and the
 * keywords "public" (globally routable unicast addresses) and "all".  The
 * check is made on the address libcurl is about to connect to, after name
 * resolution (http.c's open-socket callback), so a name that resolves to a
 * private address is refused like the address itself.  Superusers' webhooks
 * and model endpoints (superuser-only) may go anywhere.
 */
#include "postgres.h"

#include "http.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inet.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>

PG_FUNCTION_INFO_V1(docextract_egress_allowed);

char	   *docextract_webhook_allowed_destinations = NULL;

/* An address or a range, in network byte order; IPv4 has 4 bytes. */
typedef struct EgressRange
{
	int			len;			/* 4 or 16 */
	unsigned char addr[16];
	int			bits;
} EgressRange;

typedef struct EgressPolicy
{
	bool		all;
	bool		public_addresses;
	int			n;
	EgressRange ranges[FLEXIBLE_ARRAY_MEMBER];
} EgressPolicy;

static const EgressPolicy *policy = NULL;

/* Not globally routable (RFC 6890 and successors): never "public". */
static const char *const special_v4[] = {
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24",
	"192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16", "192.175.48.0/24",
	"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4",
	"240.0.0.0/4", NULL
};

/* Inside 2000::/3 (global unicast) but not public: Teredo and IETF, docs, 6to4. */
static const char *const special_v6[] = {
	"2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20", NULL
};

/*
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is its IPv4 address: the
 * kernel connects to that.  Rewrites *len and addr in place.
 */
static void
unmap(int *len, unsigned char *addr)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

	if (*len == 16 && memcmp(addr, mapped, 12) == 0)
	{
		memmove(addr, addr + 12, 4);
		*len = 4;
	}
}

/*
 * Parse "a.b.c.d[/n]" or "x:y::z[/n]"; false if it is neither.  A range of
 * IPv4-mapped addresses is the IPv4 range, as addresses are matched.
 */
static bool
parse_range(const char *text, EgressRange *r)
{
	char		buf[INET6_ADDRSTRLEN + 8];
	char	   *slash;
	char	   *end;
	long		bits;

	if (strlen(text) >= sizeof(buf))
		return false;
	strcpy(buf, text);
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	if (inet_pton(AF_INET, buf, r->addr) == 1)
		r->len = 4;
	else if (inet_pton(AF_INET6, buf, r->addr) == 1)
		r->len = 16;
	else
		return false;
	r->bits = r->len * 8;
	if (slash)
	{
		errno = 0;
		bits = strtol(slash + 1, &end, 10);
		if (errno || end == slash + 1 || *end != '\0' || bits < 0 || bits > r->len * 8)
			return false;
		r->bits = (int) bits;
	}
	if (r->len == 16 && r->bits >= 96)
	{
		unmap(&r->len, r->addr);
		if (r->len == 4)
			r->bits -= 96;
	}
	return true;
}

static bool
in_range(const EgressRange *r, int len, const unsigned char *addr)
{
	int			whole = r->bits / 8;
	int			rest = r->bits % 8;

	if (r->len != len || memcmp(r->addr, addr, whole) != 0)
		return false;
	return rest == 0 || ((r->addr[whole] ^ addr[whole]) & (0xFF << (8 - rest)) & 0xFF) == 0;
}

static bool
in_any(const char *const *list, int len, const unsigned char *addr)
{
	for (int i = 0; list[i]; i++)
	{
		EgressRange r;

		if (parse_range(list[i], &r) && in_range(&r, len, addr))
			return true;
	}
	return false;
}

static bool
is_public(int len, const unsigned char *addr)
{
	static const unsigned char nat64[12] = {0, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0};

	if (len == 4)
		return !in_any(special_v4, 4, addr);
	/* NAT64's well-known prefix reaches the IPv4 address it embeds. */
	if (memcmp(addr, nat64, 12) == 0)
		return !in_any(special_v4, 4, addr + 12);
	return (addr[0] & 0xE0) == 0x20 && !in_any(special_v6, 16, addr);
}

/* May a connection go to this address (4 or 16 bytes)? */
static bool
egress_allowed_bytes(int len, const unsigned char *address, bool for_superuser)
{
	unsigned char addr[16];

	if (for_superuser)
		return true;
	if (policy == NULL)
		return false;
	memcpy(addr, address, len);
	unmap(&len, addr);
	if (policy->all || (policy->public_addresses && is_public(len, addr)))
		return true;
	for (int i = 0; i < policy->n; i++)
		if (in_range(&policy->ranges[i], len, addr))
			return true;
	return false;
}

/* The same for a socket address; its text form in text (INET6_ADDRSTRLEN). */
bool
egress_allowed_sockaddr(const struct sockaddr *sa, bool for_superuser, char *text)
{
	const unsigned char *bytes;
	int			len;

	if (sa->sa_family == AF_INET)
	{
		bytes = (const unsigned char *) &((const struct sockaddr_in *) sa)->sin_addr;
		len = 4;
	}
	else if (sa->sa_family == AF_INET6)
	{
		bytes = (const unsigned char *) &((const struct sockaddr_in6 *) sa)->sin6_addr;
		len = 16;
	}
	else
	{
		strcpy(text, "(not an IP address)");
		return false;
	}
	inet_ntop(sa->sa_family, bytes, text, INET6_ADDRSTRLEN);
	return egress_allowed_bytes(len, bytes, for_superuser);
}

/* -- the setting ----------------------------------------------------------- */

/* Split on commas, trim blanks; NULL and a message if an item is not valid. */
static EgressPolicy *
parse_policy(const char *value, char **bad)
{
	char	   *copy = pstrdup(value);
	int			max = 1;
	EgressPolicy *p;
	char	   *save = NULL;

	for (const char *c = value; *c; c++)
		max += *c == ',';
	p = palloc0(offsetof(EgressPolicy, ranges) + sizeof(EgressRange) * max);
	for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save))
	{
		char	   *end;

		while (isspace((unsigned char) *item))
			item++;
		end = item + strlen(item);
		while (end > item && isspace((unsigned char) end[-1]))
			*--end = '\0';
		if (*item == '\0')
			continue;
		if (pg_strcasecmp(item, "all") == 0)
			p->all = true;
		else if (pg_strcasecmp(item, "public") == 0)
			p->public_addresses = true;
		else if (!parse_range(item, &p->ranges[p->n++]))
		{
			*bad = pstrdup(item);
			pfree(p);
			p = NULL;
			break;
		}
	}
	pfree(copy);
	return p;
}

static bool
check_destinations(char **newval, void **extra, GucSource source)
{
	char	   *bad = NULL;
	EgressPolicy *p = parse_policy(*newval ? *newval : "", &bad);
	size_t		size;

	if (p == NULL)
	{
		GUC_check_errdetail("\"%s\" is neither an address, a CIDR range (such as 10.1.0.0/16 or fd00::/8), \"public\" nor \"all\".",
							bad);
		return false;
	}
	size = offsetof(EgressPolicy, ranges) + sizeof(EgressRange) * p->n;
	*extra = malloc(size);		/* GUC extras are malloc'd */
	if (*extra == NULL)
		return false;
	memcpy(*extra, p, size);
	pfree(p);
	return true;
}

static void
assign_destinations(const char *newval, void *extra)
{
	policy = extra;
}

void
egress_define_settings(void)
{
	DefineCustomStringVariable("docextract.webhook_allowed_destinations",
							   "Where webhooks of roles that are not superusers may connect: CIDR ranges, \"public\", \"all\".",
							   "Checked on the address connected to, after name resolution. Superusers' webhooks may go anywhere.",
							   &docextract_webhook_allowed_destinations, "public",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   check_destinations, assign_destinations, NULL);
}

/* -- checks ---------------------------------------------------------------- */

static void
refuse_destination(const char *url, const char *address)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
			 errmsg("webhook url \"%s\": destination %s is not allowed by docextract.webhook_allowed_destinations",
					url, address),
			 errhint("Webhooks of roles that are not superusers may connect only to the addresses that setting allows (default: public addresses).")));
}

/*
 * At add_webhook: a host written as an IP address that the caller's
 * webhooks may not reach is refused at once.  Names are checked when
 * connecting, on the address they resolve to.
 */
void
egress_check_url(const char *url, bool for_superuser)
{
	CURLU	   *u = curl_url();
	char	   *host = NULL;
	unsigned char addr[16];
	char		buf[INET6_ADDRSTRLEN + 2];
	int			len = 0;

	if (u == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
	{
		curl_url_cleanup(u);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE), errhidestmt(true),
				 errmsg("webhook url \"%s\" is not a valid URL", url)));
	}
	strlcpy(buf, host[0] == '[' ? host + 1 : host, sizeof(buf));
	curl_free(host);
	curl_url_cleanup(u);
	if (buf[0] && buf[strlen(buf) - 1] == ']')
		buf[strlen(buf) - 1] = '\0';
	if (strchr(buf, '%'))
		*strchr(buf, '%') = '\0';	/* an IPv6 zone */
	if (inet_pton(AF_INET, buf, addr) == 1)
		len = 4;
	else if (inet_pton(AF_INET6, buf, addr) == 1)
		len = 16;
	if (len && !egress_allowed_bytes(len, addr, for_superuser))
		refuse_destination(url, buf);
}

/*
 * SQL: docextract.egress_allowed(address inet, for_superuser boolean):
 * would a webhook connect to address, under the current setting?  Nothing
 * is sent anywhere.
 */
Datum
docextract_egress_allowed(PG_FUNCTION_ARGS)
{
	inet	   *ip = PG_GETARG_INET_PP(0);
	int			len = ip_family(ip) == PGSQL_AF_INET ? 4 : 16;

	PG_RETURN_BOOL(egress_allowed_bytes(len, ip_addr(ip), PG_GETARG_BOOL(1)));
}
