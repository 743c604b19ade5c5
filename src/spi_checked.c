/*
 * spi_checked.c: SPI calls whose failure is an error (see spi_checked.h).
 */
#include "postgres.h"

#include "spi_checked.h"

/* How much of a statement a message quotes. */
#define QUOTED_SQL_MAX 120

static void
spi_failed(const char *call, int rc, const char *sql)
{
	elog(ERROR, "docextract: %s failed (%s)%s%.*s%s", call, SPI_result_code_string(rc),
		 sql ? ": " : "", QUOTED_SQL_MAX, sql ? sql : "",
		 sql && strlen(sql) > QUOTED_SQL_MAX ? "..." : "");
}

void
spi_connect(void)
{
	int			rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		spi_failed("SPI_connect", rc, NULL);
}

void
spi_finish(void)
{
	int			rc = SPI_finish();

	if (rc != SPI_OK_FINISH)
		spi_failed("SPI_finish", rc, NULL);
}

int
spi_execute(const char *sql, bool read_only, long count)
{
	int			rc = SPI_execute(sql, read_only, count);

	if (rc < 0)
		spi_failed("SPI_execute", rc, sql);
	return rc;
}

int
spi_execute_with_args(const char *sql, int nargs, Oid *types, Datum *values,
					  const char *nulls, bool read_only, long count)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, count);

	if (rc < 0)
		spi_failed("SPI_execute_with_args", rc, sql);
	return rc;
}

int
spi_execute_plan(SPIPlanPtr plan, Datum *values, const char *nulls,
				 bool read_only, long count)
{
	int			rc = SPI_execute_plan(plan, values, nulls, read_only, count);

	if (rc < 0)
		spi_failed("SPI_execute_plan", rc, NULL);
	return rc;
}

/* A plan prepared and kept for the life of the process. */
SPIPlanPtr
spi_prepare_kept(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);
	int			rc;

	if (plan == NULL)
		spi_failed("SPI_prepare", SPI_result, sql);
	if ((rc = SPI_keepplan(plan)) != 0)
		spi_failed("SPI_keepplan", rc, sql);
	return plan;
}

/*
 * Statements run for every job or batch: planned once and kept in *plan
 * (the plan cache replans them after DDL, or for another role where row
 * security applies).
 */
SPIPlanPtr
spi_kept_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
		*plan = spi_prepare_kept(sql, nargs, types);
	return *plan;
}

/* Run sql with a plan kept in *plan (spi_kept_plan): for statements run on every call. */
int
spi_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types, Datum *values,
				 const char *nulls, bool read_only, long count)
{
	return spi_execute_plan(spi_kept_plan(plan, sql, nargs, types), values, nulls, read_only, count);
}
