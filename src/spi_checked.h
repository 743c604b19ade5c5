/*
 * spi_checked.h: SPI calls whose failure is an error, never ignored.
 *
 * spi_xxx is SPI_xxx checked: the same signature, the same result (so a
 * call site changes only the case of the name, and its continuation lines
 * stay aligned), but a failure raises.  An SPI failure (a negative
 * result: not connected, a bad argument, a statement SPI refuses) cannot
 * come from what a user typed -- the statement's own errors are raised by
 * the executor with their SQLSTATE -- so it is an internal error naming
 * the call and the statement.
 */
#ifndef SPI_CHECKED_H
#define SPI_CHECKED_H

#include "postgres.h"

#include "executor/spi.h"

extern void spi_connect(void);
extern void spi_finish(void);
extern int	spi_execute(const char *sql, bool read_only, long count);
extern int	spi_execute_with_args(const char *sql, int nargs, Oid *types, Datum *values,
								  const char *nulls, bool read_only, long count);
extern int	spi_execute_plan(SPIPlanPtr plan, Datum *values, const char *nulls,
							 bool read_only, long count);
extern SPIPlanPtr spi_prepare_kept(const char *sql, int nargs, Oid *types);
extern SPIPlanPtr spi_kept_plan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types);
extern int	spi_execute_kept(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types,
							 Datum *values, const char *nulls, bool read_only, long count);

#endif							/* SPI_CHECKED_H */
