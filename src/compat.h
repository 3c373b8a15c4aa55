/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The one place where eds adapts to differences between PostgreSQL
 *		major versions.  eds is built and tested on PostgreSQL 15; the shims
 *		below keep the rest of the code free of PG_VERSION_NUM tests.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EDS_COMPAT_H
#define EDS_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "eds requires PostgreSQL 15 or later"
#endif

/*
 * Version-specific shims go here, so the rest of the code stays free of
 * PG_VERSION_NUM tests.  PostgreSQL 15 needs none yet.
 */

#endif							/* EDS_COMPAT_H */
